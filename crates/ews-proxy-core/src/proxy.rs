//! The reverse proxy service: sends each request to Exchange and streams the answer back.
//!
//! The request keeps its method, path, query, headers and body; only the target changes: the URI
//! points at the upstream and `Host` names it. Bodies stream both ways frame by frame: a
//! `GetStreamingEvents` response that stays open for 30 minutes reaches the client chunk by chunk.
//! The timeout covers the wait for Exchange's response headers only, never a streaming body.
//! ActiveSync's `Ping` and `Sync`, whose answer Exchange holds back until the mailbox changes or
//! the device's heartbeat (up to 59 minutes) ends, get a timeout of their own once their whole
//! body is sent ([`Upstream::with_hanging_timeout`], [`DEFAULT_HANGING_TIMEOUT`] unless set),
//! and meanwhile pause the client connection's idle timer ([`crate::server::IdleTimer`]); a body
//! still arriving when the usual timeout is over gets the `408` any request would.
//!
//! Failures never escape as errors: they become SOAP faults (`502` unreachable or TLS failure,
//! `504` timeout, `413` body over the limit set by [`crate::body_limit`]) and a log line. A
//! timeout that finds the proxy waiting for the next bytes of the client's request body is the
//! client's slowness, not Exchange's (Exchange answers once it has the whole request): `408
//! request-body-timeout`.
//!
//! ```no_run
//! use ews_proxy_core::proxy::{ReverseProxy, Upstream};
//! use ews_proxy_core::tls::UpstreamTrust;
//! use ews_proxy_core::upstream::{PoolSettings, UpstreamClient};
//! use std::time::Duration;
//! use tower::ServiceExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = UpstreamClient::new(&UpstreamTrust::default(), &PoolSettings::default())?;
//! let exchange = Upstream::new("https://exchange.corp.example".parse()?, Duration::from_secs(60))?;
//! let proxy = ReverseProxy::new(client, exchange);
//! let request = http::Request::post("/EWS/Exchange.asmx")
//!     .body(http_body_util::Full::new(bytes::Bytes::from_static(b"<soap/>")))?;
//! let response = proxy.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```

use crate::body::{BoxError, ResponseBody};
use crate::fault::{FaultCode, SoapFault};
use crate::host_pool::{HostPool, SendError, SendFuture};
use crate::routing::may_hang;
use crate::server::{IdlePause, IdleTimer};
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use rustls::pki_types::ServerName;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;

/// Why an upstream address was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The URL is not `http://` or `https://` with a host.
    #[error("upstream url {0} must be http:// or https:// with a host")]
    NotHttp(String),
    /// The host does not make a valid `Host` header or TLS server name.
    #[error("upstream host {0} is not a valid host name")]
    BadHost(String),
}

/// The default wait for the answer to a request that may hang ([`crate::routing::may_hang`]):
/// Exchange's longest heartbeat (3,540 seconds, the most MS-ASCMD allows a `Ping` or `Sync`)
/// and two minutes for Exchange to answer once it ends.
pub const DEFAULT_HANGING_TIMEOUT: Duration = Duration::from_secs(3540 + 120);

/// Where the proxy sends requests: scheme and authority of Exchange, and how long to wait for its
/// response headers.
#[derive(Clone, Debug)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    server_name: ServerName<'static>,
    timeout: Duration,
    hanging_timeout: Duration,
}

impl Upstream {
    /// The upstream at `url` (its path, if any, is ignored: requests keep their own path),
    /// waiting `timeout` for response headers; [`DEFAULT_HANGING_TIMEOUT`] for requests that
    /// may hang.
    pub fn new(url: Uri, timeout: Duration) -> Result<Self, UpstreamError> {
        let scheme = url
            .scheme()
            .cloned()
            .filter(|s| *s == Scheme::HTTP || *s == Scheme::HTTPS);
        let (Some(scheme), Some(authority)) = (scheme, url.authority().cloned()) else {
            return Err(UpstreamError::NotHttp(url.to_string()));
        };
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| UpstreamError::BadHost(authority.to_string()))?;
        let server_name = ServerName::try_from(unbracketed(authority.host()).to_owned())
            .map_err(|_| UpstreamError::BadHost(authority.to_string()))?;
        Ok(Upstream {
            scheme,
            authority,
            host,
            server_name,
            timeout,
            hanging_timeout: DEFAULT_HANGING_TIMEOUT,
        })
    }

    /// Waits `timeout` for the response headers of a request that may hang (ActiveSync `Ping`
    /// and `Sync`, [`crate::routing::may_hang`]) instead of [`DEFAULT_HANGING_TIMEOUT`]. Shorter
    /// than the heartbeats devices ask for, every such request would end in `504`.
    pub fn with_hanging_timeout(mut self, timeout: Duration) -> Self {
        self.hanging_timeout = timeout;
        self
    }

    /// The upstream's host and port, as sent in `Host`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The host without IPv6 brackets, as connected to.
    pub fn host(&self) -> &str {
        unbracketed(self.authority.host())
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.scheme == Scheme::HTTPS {
                443
            } else {
                80
            })
    }

    /// The name the upstream's TLS certificate must carry.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The wait for response headers.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The wait for the response headers of a request that may hang.
    pub fn hanging_timeout(&self) -> Duration {
        self.hanging_timeout
    }
}

fn unbracketed(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The proxy service. Cheap to clone; every clone shares one connection pool.
#[derive(Clone, Debug)]
pub struct ReverseProxy {
    pool: HostPool,
    upstream: Arc<Upstream>,
}

impl ReverseProxy {
    /// A proxy that sends every request to `upstream`, over connections made with `client`'s
    /// TLS and pool settings (see [`crate::host_pool`]).
    pub fn new(client: UpstreamClient, upstream: Upstream) -> Self {
        ReverseProxy {
            pool: HostPool::new(&client, &upstream),
            upstream: Arc::new(upstream),
        }
    }

    /// The upstream this proxy sends to.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The connections this proxy sends on.
    pub fn pool(&self) -> &HostPool {
        &self.pool
    }
}

impl<B> tower::Service<Request<B>> for ReverseProxy
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool has no readiness of its own: a request takes a connection or opens one.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // A Ping's body gets the usual timeout to arrive; only then may Exchange hold the
        // answer for as long as the heartbeat.
        let timeout = self.upstream.timeout;
        let hanging_timeout = (may_hang(&request) && self.upstream.hanging_timeout > timeout)
            .then_some(self.upstream.hanging_timeout);
        let (mut parts, body) = request.into_parts();
        // Origin form (`/EWS/Exchange.asmx?…`): the pool adds scheme and authority for HTTP/2.
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            parts.uri = match parts.uri.path_and_query() {
                Some(path) => Uri::from(path.clone()),
                None => Uri::from(PathAndQuery::from_static("/")),
            };
        }
        // Exchange gets HTTP/1.1 or h2 by ALPN, whatever the client used.
        parts.version = Version::HTTP_11;
        parts
            .headers
            .insert(header::HOST, self.upstream.host.clone());
        // While a request that may hang waits with its whole body sent, the client owes
        // nothing: its connection's idle timer is paused (the hanging timeout bounds the wait).
        let idle_timer = hanging_timeout.and_then(|_| parts.extensions.get::<IdleTimer>().cloned());
        // Whether the upstream connection is waiting for the client's next bytes, for a
        // timeout to tell whose it is; not tracked (no allocation) for a complete body.
        let (body, awaiting_client, idle_pause) = if body.is_end_stream() {
            let pause = idle_timer.map(|timer| timer.pause());
            (body.map_err(Into::into).boxed_unsync(), None, pause)
        } else {
            let progress = Arc::new(BodyProgress {
                awaiting: AtomicBool::new(false),
                idle_timer,
                idle_pause: OnceLock::new(),
            });
            let body = AwaitTracked {
                inner: body,
                progress: progress.clone(),
            };
            (
                body.map_err(Into::into).boxed_unsync(),
                Some(progress),
                None,
            )
        };
        let request = Request::from_parts(parts, body);
        ResponseFuture {
            response: self.pool.send(request),
            deadline: tokio::time::sleep(timeout),
            timeout,
            hanging_timeout,
            awaiting_client,
            _idle_pause: idle_pause,
        }
    }
}

pin_project! {
    /// Response future of [`ReverseProxy`].
    pub struct ResponseFuture {
        response: SendFuture,
        #[pin]
        deadline: Sleep,
        timeout: Duration,
        // For a request that may hang: the timeout it gets once `timeout` is over with its
        // body sent; taken when applied.
        hanging_timeout: Option<Duration>,
        // The request body's progress; `None`: the body was complete from the start.
        awaiting_client: Option<Arc<BodyProgress>>,
        // The client connection's idle timer paused, for a request that may hang whose body
        // was complete from the start.
        _idle_pause: Option<IdlePause>,
    }
}

/// How far a request body has come, shared by the body on its way to Exchange and the response
/// future.
struct BodyProgress {
    /// The last poll of the body waited for the client's next bytes.
    awaiting: AtomicBool,
    /// For a request that may hang: its connection's idle timer, paused once the body is sent.
    idle_timer: Option<IdleTimer>,
    idle_pause: OnceLock<IdlePause>,
}

impl BodyProgress {
    fn awaiting_client(&self) -> bool {
        self.awaiting.load(Ordering::Relaxed)
    }
}

pin_project! {
    /// A request body that records whether its last poll waited for the client, and pauses the
    /// client connection's idle timer once it is sent, when asked to.
    struct AwaitTracked<B> {
        #[pin]
        inner: B,
        progress: Arc<BodyProgress>,
    }
}

impl<B: Body> Body for AwaitTracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let progress = &**this.progress;
        progress
            .awaiting
            .store(polled.is_pending(), Ordering::Relaxed);
        if let Some(timer) = &progress.idle_timer {
            let sent = match &polled {
                Poll::Ready(None) => true,
                Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
                _ => false,
            };
            if sent {
                progress.idle_pause.get_or_init(|| timer.pause());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.response.as_mut().poll(cx) {
            return Poll::Ready(Ok(match result {
                Ok(response) => response,
                Err(error) => fault_for(&error),
            }));
        }
        ready!(this.deadline.as_mut().poll(cx));
        let awaiting_client = this
            .awaiting_client
            .as_deref()
            .is_some_and(BodyProgress::awaiting_client);
        if !awaiting_client && let Some(hanging) = this.hanging_timeout.take() {
            // The whole request is with Exchange, which may hold a Ping for its heartbeat.
            let started = this.deadline.deadline() - *this.timeout;
            this.deadline.as_mut().reset(started + hanging);
            *this.timeout = hanging;
            if this.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        if awaiting_client {
            tracing::info!(timeout = ?this.timeout, "the client's request body did not arrive before the timeout");
            return Poll::Ready(Ok(SoapFault::new(
                StatusCode::REQUEST_TIMEOUT,
                FaultCode::TimeoutExpired,
                "the request body did not arrive in time",
            )
            .with_reason("request-body-timeout")
            .into_response()));
        }
        tracing::warn!(timeout = ?this.timeout, "exchange did not answer in time");
        Poll::Ready(Ok(SoapFault::new(
            StatusCode::GATEWAY_TIMEOUT,
            FaultCode::TimeoutExpired,
            format!("exchange did not answer within {:?}", this.timeout),
        )
        .with_reason("upstream-timeout")
        .into_response()))
    }
}

/// What a failed exchange with the upstream means for the client.
fn fault_for(error: &SendError) -> Response<ResponseBody> {
    let chain = ErrorChain(Some(error));
    let fault = if chain
        .clone()
        .any(|e| e.is::<http_body_util::LengthLimitError>())
    {
        tracing::info!("request body over the size limit");
        SoapFault::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            FaultCode::InvalidRequest,
            "the request body is larger than the gateway accepts",
        )
        .with_reason("body-too-large")
    } else if matches!(error, SendError::Http(e) if e.is_user()) {
        // The client's own body failed while it was being sent (a malformed chunk, a reset):
        // the client's fault, not Exchange's; counting it as an upstream failure would let any
        // client raise that alarm at will.
        tracing::info!(error = %DisplayChain(error), "request body failed while it was sent to exchange");
        SoapFault::new(
            StatusCode::BAD_REQUEST,
            FaultCode::InvalidRequest,
            "the request body could not be read",
        )
        .with_reason("request-body-unreadable")
    } else if let Some(tls) = chain.clone().find_map(as_tls_error) {
        tracing::warn!(error = %tls, "tls handshake with exchange failed");
        SoapFault::new(
            StatusCode::BAD_GATEWAY,
            FaultCode::ConnectionFailed,
            format!("tls handshake with exchange failed: {tls}"),
        )
        .with_reason("upstream-tls")
    } else if matches!(
        error,
        SendError::Connect { .. } | SendError::ConnectTimeout { .. } | SendError::Tls { .. }
    ) {
        tracing::warn!(error = %DisplayChain(error), "exchange is unreachable");
        SoapFault::new(
            StatusCode::BAD_GATEWAY,
            FaultCode::ConnectionFailed,
            "exchange is unreachable",
        )
        .with_reason("upstream-unreachable")
    } else {
        tracing::warn!(error = %DisplayChain(error), "exchange request failed");
        SoapFault::new(
            StatusCode::BAD_GATEWAY,
            FaultCode::ConnectionFailed,
            "the connection to exchange failed before a response",
        )
        .with_reason("upstream-error")
    };
    fault.into_response()
}

/// A rustls error anywhere in the chain, including inside an `io::Error` (whose `source()` skips
/// the error it wraps, so it is unwrapped here by hand).
fn as_tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let io = error.downcast_ref::<std::io::Error>()?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

#[derive(Clone)]
struct ErrorChain<'a>(Option<&'a (dyn std::error::Error + 'static)>);

impl<'a> Iterator for ErrorChain<'a> {
    type Item = &'a (dyn std::error::Error + 'static);

    fn next(&mut self) -> Option<Self::Item> {
        let current = self.0?;
        self.0 = current.source().or_else(|| {
            // io::Error hides its payload from source(); step into it.
            current
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static))
        });
        Some(current)
    }
}

/// Formats an error with its causes, `a: b: c`.
pub(crate) struct DisplayChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for error in ErrorChain(Some(self.0)) {
            if !first {
                f.write_str(": ")?;
            }
            first = false;
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_host_and_port() {
        let upstream = Upstream::new(
            "https://mail.example:8443/ignored".parse().unwrap(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(upstream.host, "mail.example:8443");
        assert_eq!(upstream.host(), "mail.example");
        assert_eq!(upstream.port(), 8443);
    }

    #[test]
    fn upstream_refuses_non_http_urls() {
        assert!(matches!(
            Upstream::new("ftp://x".parse().unwrap(), Duration::from_secs(1)),
            Err(UpstreamError::NotHttp(_))
        ));
        assert!(matches!(
            Upstream::new("/relative".parse().unwrap(), Duration::from_secs(1)),
            Err(UpstreamError::NotHttp(_))
        ));
    }
}
