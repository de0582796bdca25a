//! Connections to one upstream host, kept open and reused request after request: the path every
//! proxied request takes to Exchange.
//!
//! - HTTP/1.1: a stack of idle connections. A request takes the most recently used one (its TLS
//!   session and TCP window are warm), or opens a new one; the connection goes back on the stack
//!   when the response body has been read to its end, and is closed instead when the body is
//!   dropped half-read.
//! - HTTP/2 (when offered and Exchange picks it by ALPN), for long-lived requests (EWS
//!   `GetStreamingEvents`, ActiveSync `Ping`; every request with
//!   [`PoolSettings::http2_short_requests`]): each connection carries up to the
//!   concurrent-stream limit ([`PoolSettings::http2_max_streams`], lowered to what Exchange
//!   announces), and a new connection is opened when every one is full. An HTTP/2 connection
//!   stalls every request beyond its limit, and hyper's own client never opens a second one, so
//!   without this 30-minute `GetStreamingEvents` streams would take every slot and stall all the
//!   other requests behind them.
//! - A request carrying Windows authentication (`Authorization: Negotiate …` or `NTLM …`, e.g.
//!   the Kerberos ticket of constrained delegation) always goes over HTTP/1.1, on a connection
//!   that offered only `http/1.1` by ALPN: IIS does not support Windows authentication over
//!   HTTP/2 and answers such a stream with `HTTP_1_1_REQUIRED` instead of a response.
//! - A request that found its reused connection closed by Exchange before it was written (the
//!   keep-alive race) is sent again on another connection; one already written is never resent.
//! - Idle connections older than [`PoolSettings::idle_timeout`] are closed by a background task
//!   that holds the pool only weakly.
//!
//! Why not hyper-util's pooled client, which the gateway used before: per request it clones
//! itself and its connector, hashes the pool key with SipHash under a lock and goes through a
//! checkout machinery built for any host behind any proxy: about 6% of the gateway's CPU per
//! request under load (docs/benchmarks.md). A pool that serves one host needs none of that.
//!
//! ```no_run
//! use ews_proxy_core::host_pool::HostPool;
//! use ews_proxy_core::proxy::Upstream;
//! use ews_proxy_core::tls::UpstreamTrust;
//! use ews_proxy_core::upstream::{PoolSettings, UpstreamClient};
//! use http_body_util::BodyExt;
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = UpstreamClient::new(&UpstreamTrust::default(), &PoolSettings::default())?;
//! let exchange = Upstream::new("https://exchange.corp.example".parse()?, Duration::from_secs(60))?;
//! let pool = HostPool::new(&client, &exchange);
//! let request = http::Request::post("/EWS/Exchange.asmx")
//!     .body(http_body_util::Full::new(bytes::Bytes::from_static(b"<soap/>"))
//!         .map_err(Into::into)
//!         .boxed_unsync())?;
//! let response = pool.send(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```

use crate::body::{ResponseBody, UpstreamBody};
use crate::proxy::Upstream;
use crate::routing::is_long_lived;
use crate::upstream::{PoolSettings, PresentedCertificates, UpstreamClient};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// Why a request could not be exchanged with the upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No TCP connection could be made (refused, unreachable, name not resolved).
    #[error("cannot connect to {authority}")]
    Connect {
        /// The upstream's host and port.
        authority: Authority,
        /// What the connect attempt answered.
        #[source]
        source: io::Error,
    },
    /// Connecting (TCP and TLS) took longer than the connect timeout.
    #[error("connecting to {authority} took longer than {timeout:?}")]
    ConnectTimeout {
        /// The upstream's host and port.
        authority: Authority,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The TLS handshake failed (certificate not trusted, name mismatch, protocol error).
    #[error("tls handshake with {authority} failed")]
    Tls {
        /// The upstream's host and port.
        authority: Authority,
        /// rustls' error, inside the `io::Error` tokio-rustls reports it in.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange failed: the connection broke, the response was malformed, or the
    /// request body failed (its error, e.g. a size limit, is in the source chain).
    #[error("http exchange with the upstream failed")]
    Http(#[source] hyper::Error),
}

/// A pool of connections to one upstream host; see the [module docs](self). Cheap to clone:
/// clones share the connections.
#[derive(Clone)]
pub struct HostPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPool")
            .field("authority", &self.shared.target.authority)
            .field("tls", &self.shared.target.tls.is_some())
            .finish()
    }
}

/// Where connections go and how they are made.
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// The host without IPv6 brackets, for the TCP connect.
    host: String,
    port: u16,
    tls: Option<TlsTarget>,
}

/// How TLS connections to the host are made.
struct TlsTarget {
    /// Offers what the pool settings allow by ALPN (`h2` and `http/1.1`, or `http/1.1`).
    connector: TlsConnector,
    /// Offers `http/1.1` only: for requests that must not go over HTTP/2.
    http1_connector: TlsConnector,
    name: ServerName<'static>,
}

struct Shared {
    target: Target,
    settings: PoolSettings,
    /// Where each TLS connection's certificate is recorded.
    presented: PresentedCertificates,
    /// Idle HTTP/1.1 connections, most recently used last.
    idle: Mutex<Vec<IdleConnection>>,
    /// Open HTTP/2 connections.
    h2: Mutex<Vec<H2Connection>>,
    /// Held while an HTTP/2 connection is being opened, so that a burst of requests opens one
    /// connection, not one each.
    h2_opening: tokio::sync::Mutex<()>,
    /// Whether Exchange picked HTTP/2 on the last connection that offered it: [`H2_UNKNOWN`]
    /// before the first, [`H2_SPOKEN`] or [`H2_NOT_SPOKEN`].
    speaks_h2: AtomicU8,
    reaper_started: AtomicBool,
}

struct IdleConnection {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

struct H2Connection {
    sender: http2::SendRequest<UpstreamBody>,
    /// Streams in use.
    streams: Arc<AtomicUsize>,
    /// The concurrent streams Exchange allows, as its last SETTINGS frame said.
    allowed: Arc<AtomicUsize>,
}

/// A connection taken for one request.
enum Taken {
    Http1(http1::SendRequest<UpstreamBody>),
    Http2(http2::SendRequest<UpstreamBody>, StreamSlot),
}

/// What a response body holds of its pooled connection until the body ends: the HTTP/1.1
/// connection to give back, or the HTTP/2 stream slot to free. Dropped before the end, it gives
/// nothing back: a half-read HTTP/1.1 connection cannot serve another request.
pub struct PoolLease(Lease);

impl std::fmt::Debug for PoolLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Lease::Http1 { .. } => "PoolLease(http/1.1)",
            Lease::Http2(_) => "PoolLease(http/2)",
        })
    }
}

impl PoolLease {
    /// The body was read to its end: the connection can serve another request.
    pub(crate) fn release(self) {
        if let Lease::Http1 { pool, sender } = self.0 {
            pool.put_idle(sender);
        }
    }
}

enum Lease {
    Http1 {
        pool: Arc<Shared>,
        sender: http1::SendRequest<UpstreamBody>,
    },
    /// Frees the slot when dropped.
    Http2(#[allow(dead_code)] StreamSlot),
}

/// One of an HTTP/2 connection's streams, in use until dropped.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// The future of [`HostPool::send`].
pub type SendFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, SendError>> + Send>>;

impl HostPool {
    /// A pool for `upstream`'s host, with the TLS and pool settings of `client`.
    pub fn new(client: &UpstreamClient, upstream: &Upstream) -> Self {
        let tls = (*upstream.scheme() == Scheme::HTTPS).then(|| {
            let mut http1_only = (**client.tls_config()).clone();
            http1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsTarget {
                connector: TlsConnector::from(client.tls_config().clone()),
                http1_connector: TlsConnector::from(Arc::new(http1_only)),
                name: upstream.server_name().clone(),
            }
        });
        let tls_offers_h2 = tls.is_some()
            && client
                .tls_config()
                .alpn_protocols
                .iter()
                .any(|protocol| protocol == b"h2");
        HostPool {
            shared: Arc::new(Shared {
                target: Target {
                    scheme: upstream.scheme().clone(),
                    authority: upstream.authority().clone(),
                    host: upstream.host().to_owned(),
                    port: upstream.port(),
                    tls,
                },
                settings: client.settings().clone(),
                presented: client.presented_certificates().clone(),
                idle: Mutex::new(Vec::new()),
                h2: Mutex::new(Vec::new()),
                h2_opening: tokio::sync::Mutex::new(()),
                // Never offered over plain HTTP, nor when the settings say not to.
                speaks_h2: AtomicU8::new(if tls_offers_h2 {
                    H2_UNKNOWN
                } else {
                    H2_NOT_SPOKEN
                }),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` (its target in origin form, `/path?query`; `Host` as the caller wants it)
    /// and resolves to the response once its headers have arrived. The body streams on, and
    /// its connection returns to the pool when the body has been read to the end.
    pub fn send(&self, request: Request<UpstreamBody>) -> SendFuture {
        Box::pin(self.shared.clone().send(request))
    }

    /// Idle HTTP/1.1 connections and open HTTP/2 connections, for tests and metrics.
    pub fn open_connections(&self) -> (usize, usize) {
        (lock(&self.shared.idle).len(), lock(&self.shared.h2).len())
    }
}

impl Shared {
    async fn send(
        self: Arc<Self>,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        // The Authorization header is looked at only for a request HTTP/2 would take: most
        // requests are short and go over HTTP/1.1 anyway.
        let wants_http2 = self.settings.http2_short_requests || is_long_lived(&request);
        let protocol = if wants_http2 && !carries_windows_auth(request.headers()) {
            Protocol::Http2WhenSpoken
        } else {
            Protocol::Http1Only
        };
        loop {
            let (taken, reused) = match self.take(protocol) {
                Some(taken) => (taken, true),
                // Boxed: opening holds a TLS handshake and an HTTP/2 one, several KiB that
                // would otherwise be part of (and copied into) every request's future, though
                // most requests find a pooled connection.
                None => (Box::pin(self.open(protocol)).await?, false),
            };
            match taken {
                Taken::Http1(mut sender) => {
                    if let Err(error) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
                        // Closed by Exchange while idle: the request was not written, so another
                        // connection may carry it. A new connection closed at once is Exchange's
                        // answer, not a race: opening connection after connection would never end.
                        if reused {
                            continue;
                        }
                        return Err(SendError::Http(error));
                    }
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            return Ok(with_lease(response, Lease::Http1 { pool: self, sender }));
                        }
                        Err(mut error) => match error.take_message() {
                            Some(unsent) if reused => request = unsent,
                            _ => return Err(SendError::Http(error.into_error())),
                        },
                    }
                }
                Taken::Http2(mut sender, slot) => {
                    let target = &self.target;
                    let absolute = absolute_uri(&target.scheme, &target.authority, &request);
                    if let Some(uri) = absolute {
                        *request.uri_mut() = uri;
                    }
                    match sender.try_send_request(request).await {
                        Ok(response) => return Ok(with_lease(response, Lease::Http2(slot))),
                        Err(mut error) => match error.take_message() {
                            Some(unsent) if reused => request = unsent,
                            _ => return Err(SendError::Http(error.into_error())),
                        },
                    }
                }
            }
        }
    }

    /// A pooled connection with room for a request, if any.
    fn take(&self, protocol: Protocol) -> Option<Taken> {
        if protocol == Protocol::Http2WhenSpoken {
            match self.speaks_h2.load(Ordering::Relaxed) {
                // None: every HTTP/2 connection is full, open another (a long-lived request
                // would hold an HTTP/1.1 connection for its whole life).
                H2_SPOKEN => return self.take_h2(),
                // Not known yet: open a connection that offers HTTP/2, and learn.
                H2_UNKNOWN => return None,
                _ => {}
            }
        }
        let mut idle = lock(&self.idle);
        idle.retain(|c| !c.sender.is_closed());
        // The most recently used connection that can take a request now. One still sending an
        // earlier request's body (Exchange answered before it ended) stays for later: waiting
        // on it would hold this request behind another client's upload.
        let ready = idle.iter().rposition(|c| c.sender.is_ready())?;
        Some(Taken::Http1(idle.remove(ready).sender))
    }

    fn take_h2(&self) -> Option<Taken> {
        let mut connections = lock(&self.h2);
        connections.retain(|c| !c.sender.is_closed());
        let limit = self.settings.http2_max_streams.max(1);
        connections.iter().find_map(|c| {
            let limit = limit.min(c.allowed.load(Ordering::Relaxed).max(1));
            c.streams
                .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                })
                .ok()
                .map(|_| Taken::Http2(c.sender.clone(), StreamSlot(c.streams.clone())))
        })
    }

    fn put_idle(&self, sender: http1::SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.settings.max_idle_per_host {
            idle.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection: TCP, TLS with ALPN, then HTTP/2 or HTTP/1.1 as Exchange chose.
    async fn open(self: &Arc<Self>, protocol: Protocol) -> Result<Taken, SendError> {
        self.start_reaper();
        // HTTP/2: one opening at a time; whoever waited finds room on the new connection.
        let _opening = if protocol == Protocol::Http2WhenSpoken
            && self.speaks_h2.load(Ordering::Relaxed) == H2_SPOKEN
        {
            let guard = self.h2_opening.lock().await;
            if let Some(taken) = self.take_h2() {
                return Ok(taken);
            }
            Some(guard)
        } else {
            None
        };
        let timeout = self.settings.connect_timeout;
        let authority = &self.target.authority;
        match tokio::time::timeout(timeout, self.connect(protocol)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::ConnectTimeout {
                authority: authority.clone(),
                timeout,
            }),
        }
    }

    async fn connect(&self, protocol: Protocol) -> Result<Taken, SendError> {
        let target = &self.target;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| SendError::Connect {
                authority: target.authority.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if let Err(error) = set_keepalive(&tcp, self.settings.tcp_keepalive) {
            tracing::debug!(%error, "cannot set tcp keep-alive on a connection to exchange");
        }
        let Some(tls_target) = &target.tls else {
            return self.handshake_http1(tcp).await;
        };
        let connector = match protocol {
            Protocol::Http2WhenSpoken => &tls_target.connector,
            Protocol::Http1Only => &tls_target.http1_connector,
        };
        let tls = connector
            .connect(tls_target.name.clone(), tcp)
            .await
            .map_err(|source| SendError::Tls {
                authority: target.authority.clone(),
                source,
            })?;
        if let Some(certificate) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
        {
            self.presented
                .record(&target.authority, certificate.clone().into_owned());
        }
        if protocol == Protocol::Http1Only {
            // Says nothing of whether Exchange would take HTTP/2: it was not offered.
            return self.handshake_http1(tls).await;
        }
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let spoken = if h2 { H2_SPOKEN } else { H2_NOT_SPOKEN };
        self.speaks_h2.store(spoken, Ordering::Relaxed);
        if !h2 {
            return self.handshake_http1(tls).await;
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(SendError::Http)?;
        let allowed = Arc::new(AtomicUsize::new(connection.current_max_send_streams()));
        let published = allowed.clone();
        let mut connection = connection;
        tokio::spawn(async move {
            // Drives the connection, and publishes the stream limit whenever Exchange's
            // SETTINGS may have changed it.
            let result = std::future::poll_fn(|cx| {
                let poll = Pin::new(&mut connection).poll(cx);
                published.store(connection.current_max_send_streams(), Ordering::Relaxed);
                poll
            })
            .await;
            if let Err(error) = result {
                tracing::debug!(%error, "http/2 connection to exchange ended");
            }
        });
        let streams = Arc::new(AtomicUsize::new(1));
        lock(&self.h2).push(H2Connection {
            sender: sender.clone(),
            streams: streams.clone(),
            allowed,
        });
        Ok(Taken::Http2(sender, StreamSlot(streams)))
    }

    async fn handshake_http1<T>(&self, io: T) -> Result<Taken, SendError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "http/1.1 connection to exchange ended");
            }
        });
        Ok(Taken::Http1(sender))
    }

    /// Closes idle connections past the idle timeout, from a task of its own that ends with
    /// the pool.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Shared> = Arc::downgrade(self);
        let idle_timeout = self.settings.idle_timeout.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(idle_timeout / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let now = Instant::now();
                lock(&pool.idle).retain(|c| {
                    !c.sender.is_closed() && now.duration_since(c.since) < idle_timeout
                });
                lock(&pool.h2).retain(|c| !c.sender.is_closed());
            }
        });
    }
}

const H2_UNKNOWN: u8 = 0;
const H2_SPOKEN: u8 = 1;
const H2_NOT_SPOKEN: u8 = 2;

/// Which connections a request may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// HTTP/2 when Exchange speaks it, else HTTP/1.1.
    Http2WhenSpoken,
    /// HTTP/1.1 only.
    Http1Only,
}

/// Whether the request authenticates to Exchange with Windows authentication (`Negotiate` or
/// `NTLM`, any case), which IIS supports over HTTP/1.1 only ("HTTP/2 on IIS": Windows
/// authentication is not supported over HTTP/2, IIS falls back to HTTP/1.1).
fn carries_windows_auth(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .any(|value| {
            let value = value.as_bytes();
            let scheme = value
                .iter()
                .position(|&b| b == b' ')
                .map_or(value, |end| &value[..end]);
            scheme.eq_ignore_ascii_case(b"Negotiate") || scheme.eq_ignore_ascii_case(b"NTLM")
        })
}

/// The response with its body holding the lease; released at once when there is no body.
fn with_lease(response: Response<hyper::body::Incoming>, lease: Lease) -> Response<ResponseBody> {
    response.map(|body| ResponseBody::leased(body, PoolLease(lease)))
}

/// `scheme://authority/path?query` for an HTTP/2 request, whose target is sent as pseudo-headers.
fn absolute_uri<B>(scheme: &Scheme, authority: &Authority, request: &Request<B>) -> Option<Uri> {
    if request.uri().scheme().is_some() {
        return None;
    }
    Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query(
            request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
        .build()
        .ok()
}

/// Locks a pool list; a panic while one was held cannot leave it inconsistent (every change
/// is a single push, pop or retain), so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Turns TCP keep-alive on (`every` before the first probe and between probes), or leaves it
/// off for a zero `every`.
fn set_keepalive(tcp: &TcpStream, every: Duration) -> std::io::Result<()> {
    if every.is_zero() {
        return Ok(());
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(every)
        .with_interval(every);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::UpstreamTrust;
    use http_body_util::BodyExt;
    use std::time::Duration;

    #[tokio::test]
    async fn connections_to_exchange_probe_a_silent_flow_unless_told_not_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (every, probed) in [(Duration::from_secs(60), true), (Duration::ZERO, false)] {
            let tcp = TcpStream::connect(addr).await.unwrap();
            set_keepalive(&tcp, every).unwrap();
            let socket = socket2::SockRef::from(&tcp);
            assert_eq!(socket.keepalive().unwrap(), probed, "{every:?}");
            if probed {
                assert_eq!(socket.tcp_keepalive_time().unwrap(), every);
                assert_eq!(socket.tcp_keepalive_interval().unwrap(), every);
            }
        }
    }

    /// Every request's future is allocated and moved whole: opening a connection (TLS and
    /// HTTP/2 handshakes, several KiB) must stay out of it. It was 7.3 KiB before `open` was
    /// boxed, copied on every request.
    #[test]
    fn a_requests_future_does_not_carry_the_opening_of_a_connection() {
        let client = UpstreamClient::new(&UpstreamTrust::default(), &PoolSettings::default())
            .expect("client");
        let exchange = Upstream::new(
            "https://exchange.test.local".parse().expect("uri"),
            Duration::from_secs(1),
        )
        .expect("upstream");
        let pool = HostPool::new(&client, &exchange);
        let request = Request::post("/EWS/Exchange.asmx")
            .body(
                http_body_util::Empty::new()
                    .map_err(Into::into)
                    .boxed_unsync(),
            )
            .expect("request");
        let future = pool.shared.clone().send(request);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1024, "the send future is {size} bytes");
    }

    #[test]
    fn windows_authentication_is_told_by_the_scheme_alone() {
        let carries = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for value in values {
                headers.append(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_str(value).expect("a header value"),
                );
            }
            carries_windows_auth(&headers)
        };
        assert!(carries(&["Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag"]));
        assert!(carries(&["negotiate YIIG"]));
        assert!(carries(&["NTLM TlRMTVNTUAABAAAAB4IIog=="]));
        assert!(carries(&["Ntlm"]));
        assert!(carries(&["Basic YWxpY2U6c2VjcmV0", "Negotiate YIIG"]));
        assert!(!carries(&[]));
        assert!(!carries(&["Basic YWxpY2U6c2VjcmV0"]));
        assert!(!carries(&["Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"]));
        assert!(!carries(&["NegotiateYIIG"]));
        assert!(!carries(&["NTLMv2 x"]));
        assert!(!carries(&[""]));
    }
}
