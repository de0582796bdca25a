//! The reverse proxy service: sends each request to Exchange and streams the answer back.
//!
//! The request keeps its method, path, query, headers and body; only the target changes: the URI
//! points at the upstream and `Host` names it. Bodies stream both ways frame by frame: a
//! `GetStreamingEvents` response that stays open for 30 minutes reaches the client chunk by chunk.
//! The timeout covers the wait for Exchange's response headers only, never a streaming body.
//!
//! Failures never escape as errors: they become SOAP faults (`502` unreachable or TLS failure,
//! `504` timeout, `413` body over the limit set by [`crate::body_limit`]) and a log line.
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
use crate::operation::EwsOperation;
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
    /// The host does not make a valid `Host` header.
    #[error("upstream host {0} is not a valid host header")]
    BadHost(String),
}

/// Where the proxy sends requests: scheme and authority of Exchange, and how long to wait for its
/// response headers.
#[derive(Clone, Debug)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    timeout: Duration,
}

impl Upstream {
    /// The upstream at `url` (its path, if any, is ignored: requests keep their own path).
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
        Ok(Upstream {
            scheme,
            authority,
            host,
            timeout,
        })
    }

    /// The upstream's host and port, as sent in `Host`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The wait for response headers.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query.map_or("/", PathAndQuery::as_str))
            .build()
    }
}

/// The proxy service. Cheap to clone; every clone shares one connection pool.
#[derive(Clone, Debug)]
pub struct ReverseProxy {
    client: UpstreamClient,
    upstream: Arc<Upstream>,
}

impl ReverseProxy {
    /// A proxy that sends every request to `upstream` through `client`.
    pub fn new(client: UpstreamClient, upstream: Upstream) -> Self {
        ReverseProxy {
            client,
            upstream: Arc::new(upstream),
        }
    }

    /// The upstream this proxy sends to.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
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
        // The pooled client has no readiness of its own: it queues on the pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        parts.uri = match self.upstream.uri_for(parts.uri.path_and_query()) {
            Ok(uri) => uri,
            Err(error) => {
                tracing::warn!(%error, "request target cannot be rewritten to the upstream");
                let fault = SoapFault::new(
                    StatusCode::BAD_REQUEST,
                    FaultCode::InvalidRequest,
                    "bad request target",
                )
                .with_reason("bad-target");
                return ResponseFuture::ready(fault.into_response());
            }
        };
        let long_lived = is_long_lived(&parts);
        // The client negotiates HTTP/1.1 or h2 with Exchange by ALPN, whatever the client used.
        parts.version = Version::HTTP_11;
        parts
            .headers
            .insert(header::HOST, self.upstream.host.clone());
        let body = body.map_err(Into::into).boxed_unsync();
        let request = Request::from_parts(parts, body);
        ResponseFuture {
            state: State::Waiting {
                response: self.client.for_request(long_lived).request(request),
                deadline: tokio::time::sleep(self.upstream.timeout),
            },
            timeout: self.upstream.timeout,
        }
    }
}

pin_project! {
    /// Response future of [`ReverseProxy`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
        timeout: Duration,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Waiting {
            #[pin]
            response: hyper_util::client::legacy::ResponseFuture,
            #[pin]
            deadline: Sleep,
        },
        Ready { response: Option<Response<ResponseBody>> },
    }
}

impl ResponseFuture {
    fn ready(response: Response<ResponseBody>) -> Self {
        ResponseFuture {
            state: State::Ready {
                response: Some(response),
            },
            timeout: Duration::ZERO,
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| internal_fault("proxy response polled after completion")))),
            StateProj::Waiting { response, deadline } => {
                if let Poll::Ready(result) = response.poll(cx) {
                    return Poll::Ready(Ok(match result {
                        Ok(response) => response.map(ResponseBody::from),
                        Err(error) => fault_for(&error),
                    }));
                }
                ready!(deadline.poll(cx));
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
    }
}

fn internal_fault(message: &'static str) -> Response<ResponseBody> {
    tracing::error!(message);
    SoapFault::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        FaultCode::InternalServerError,
        message,
    )
    .with_reason("internal")
    .into_response()
}

/// Whether the response will stay open for minutes: an EWS `GetStreamingEvents` (known from the
/// operation sniffer, when it ran) or an ActiveSync `Ping` long poll.
fn is_long_lived(parts: &http::request::Parts) -> bool {
    if matches!(
        parts.extensions.get::<EwsOperation>(),
        Some(EwsOperation::GetStreamingEvents)
    ) {
        return true;
    }
    parts.uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair.eq_ignore_ascii_case("cmd=ping"))
    })
}

/// What a failed exchange with the upstream means for the client.
fn fault_for(error: &hyper_util::client::legacy::Error) -> Response<ResponseBody> {
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
    } else if let Some(tls) = chain.clone().find_map(as_tls_error) {
        tracing::warn!(error = %tls, "tls handshake with exchange failed");
        SoapFault::new(
            StatusCode::BAD_GATEWAY,
            FaultCode::ConnectionFailed,
            format!("tls handshake with exchange failed: {tls}"),
        )
        .with_reason("upstream-tls")
    } else if error.is_connect() {
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
    fn upstream_keeps_request_path_and_query() {
        let upstream = Upstream::new(
            "https://mail.example:8443/ignored".parse().unwrap(),
            Duration::from_secs(1),
        )
        .unwrap();
        let pq: PathAndQuery = "/EWS/Exchange.asmx?x=1".parse().unwrap();
        assert_eq!(
            upstream.uri_for(Some(&pq)).unwrap(),
            "https://mail.example:8443/EWS/Exchange.asmx?x=1"
        );
        assert_eq!(upstream.host, "mail.example:8443");
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
