//! The listener: accepts TCP (and TLS) connections and serves a tower service on each, with the
//! limits a gateway on the internet needs, and graceful shutdown.
//!
//! - TLS with rustls when a [`rustls::ServerConfig`] is given (see [`crate::tls`]); plain HTTP
//!   otherwise, for deployments behind a TLS-terminating load balancer.
//! - HTTP/1.1 and HTTP/2 (by ALPN on TLS, by preface on plain connections).
//! - A cap on concurrent connections: at the cap the listener stops accepting until one closes.
//! - A header timeout (also bounding the TLS handshake) and an idle timeout: a connection that
//!   moves no byte either way for that long is closed. A streaming response that sends a
//!   keep-alive every few seconds is never idle.
//! - Each request carries a [`ConnectionInfo`] in its extensions (client address, TLS or not),
//!   and a [`PeerCertificate`] when the client presented a certificate (see
//!   [`Server::with_client_auth`]).
//! - Shutdown: stop accepting, let in-flight requests finish for up to the grace period, then cut
//!   what is left.
//!
//! ```no_run
//! use ews_proxy_core::server::{Server, ServerSettings};
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let service = tower::service_fn(|_request: Request<hyper::body::Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
//! });
//! Server::new(listener, ServerSettings::default())
//!     .serve(service, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await
//! # }
//! ```

use crate::body::BoxError;
use crate::proxy::DisplayChain;
use crate::tls::{CertificateRejection, ClientAuth};
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// What the listener knows of the connection a request came on.
///
/// The client certificate, when one was presented, is a separate extension,
/// [`PeerCertificate`], so that this type stays `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    remote_addr: SocketAddr,
    tls: bool,
}

impl ConnectionInfo {
    /// Connection from `remote_addr`, over TLS or not.
    pub fn new(remote_addr: SocketAddr, tls: bool) -> Self {
        ConnectionInfo { remote_addr, tls }
    }

    /// The client's address (the load balancer's, behind one).
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// The certificate a client presented on a TLS connection, and whether it is valid: in the
/// extensions of every request on that connection.
///
/// Only present when the listener asked for client certificates
/// ([`Server::with_client_auth`]) and the client sent one. In optional mode an invalid
/// certificate is still recorded, with the reason it is not valid; in required mode an invalid
/// one never completes the handshake. Cheap to clone.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerCertificate {
    chain: Arc<[CertificateDer<'static>]>,
    valid: Result<(), CertificateRejection>,
}

impl PeerCertificate {
    /// A presented `chain` (end entity first) and its validation outcome.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        valid: Result<(), CertificateRejection>,
    ) -> Self {
        PeerCertificate {
            chain: chain.into(),
            valid,
        }
    }

    /// The chain as the client sent it, end entity first; never empty unless built so.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The client's own certificate (DER).
    pub fn end_entity(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }

    /// `Ok` when the certificate is valid (see [`crate::tls::client_auth`]), else why not.
    pub fn valid(&self) -> Result<(), &CertificateRejection> {
        self.valid.as_ref().map(|_| ())
    }

    /// The client's certificate when it is valid: the one a user may be learnt from.
    pub fn valid_end_entity(&self) -> Option<&CertificateDer<'static>> {
        self.valid.is_ok().then(|| self.end_entity()).flatten()
    }
}

/// Limits and timeouts of a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Time allowed for the TLS handshake and for each request's headers to arrive.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection with no traffic either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once; at the cap, new ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may take to finish before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A listener ready to serve; see the [module docs](self).
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    client_auth: Option<ClientAuth>,
    settings: ServerSettings,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field(
                "client_auth",
                &self.client_auth.as_ref().map(ClientAuth::mode),
            )
            .field("settings", &self.settings)
            .finish()
    }
}

impl Server {
    /// Serves plain HTTP on `listener` with `settings`.
    pub fn new(listener: TcpListener, settings: ServerSettings) -> Self {
        Server {
            listener,
            tls: None,
            client_auth: None,
            settings,
        }
    }

    /// Serves TLS instead, with `config`.
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(TlsAcceptor::from(config));
        self
    }

    /// Validates the certificate each TLS client presents with `client_auth` after the
    /// handshake, and records the outcome in a [`PeerCertificate`] on each of its requests.
    ///
    /// The TLS configuration must ask for certificates with the same settings:
    /// [`crate::tls::server_config_with_client_auth`]. A certificate that is not valid is logged,
    /// once per connection, with the reason.
    pub fn with_client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = Some(client_auth);
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `service` until `shutdown` completes, then drains; see the [module docs](self).
    ///
    /// Returns once every connection has closed or been cut. Errors on single connections are
    /// logged, never returned.
    pub async fn serve<S, B>(self, service: S, shutdown: impl Future<Output = ()>) -> io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let Server {
            listener,
            tls,
            client_auth,
            settings,
        } = self;
        let settings = Arc::new(settings);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let local = listener.local_addr()?;
        tracing::info!(%local, tls = tls.is_some(), "listening");

        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // the semaphore is never closed; stop cleanly if it were
                },
                () = &mut shutdown => break,
            };
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and the like: the process is at a limit. Back off briefly
                        // instead of spinning on the error.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            while connections.try_join_next().is_some() {}
            let _ = stream.set_nodelay(true);
            let info = ConnectionInfo::new(remote, tls.is_some());
            let service = service.clone();
            let watcher = graceful.watcher();
            let builder = builder.clone();
            let tls = tls.clone().map(|acceptor| (acceptor, client_auth.clone()));
            let settings = settings.clone();
            connections.spawn(async move {
                let _permit = permit;
                serve_connection(stream, info, tls, service, &builder, watcher, &settings).await;
            });
        }
        drop(listener);
        tracing::info!(%local, open = connections.len(), "shutting down: draining connections");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!(%local, "all connections drained"),
            () = tokio::time::sleep(settings.shutdown_grace) => {
                tracing::warn!(%local, open = connections.len(), "shutdown grace period over: cutting the connections left");
            }
        }
        connections.shutdown().await;
        Ok(())
    }
}

async fn serve_connection<S, B>(
    stream: TcpStream,
    info: ConnectionInfo,
    tls: Option<(TlsAcceptor, Option<ClientAuth>)>,
    service: S,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    settings: &ServerSettings,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = Activity::new();
    let with_info = |peer: Option<PeerCertificate>| {
        TowerToHyperService::new(tower::util::MapRequest::new(
            service,
            move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(info);
                if let Some(peer) = &peer {
                    request.extensions_mut().insert(peer.clone());
                }
                request
            },
        ))
    };
    let result = match tls {
        Some((acceptor, client_auth)) => {
            let handshake = tokio::time::timeout(settings.header_timeout, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(remote = %info.remote_addr(), %error, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(remote = %info.remote_addr(), "tls handshake timed out");
                    return;
                }
            };
            let peer = peer_certificate(stream.get_ref().1, client_auth.as_ref(), info);
            let io = TokioIo::new(ActivityIo {
                io: stream,
                activity: activity.clone(),
            });
            let service = with_info(peer);
            let connection = watcher.watch(builder.serve_connection(io, service).into_owned());
            drive(connection, &activity, settings.idle_timeout).await
        }
        None => {
            let io = TokioIo::new(ActivityIo {
                io: stream,
                activity: activity.clone(),
            });
            let service = with_info(None);
            let connection = watcher.watch(builder.serve_connection(io, service).into_owned());
            drive(connection, &activity, settings.idle_timeout).await
        }
    };
    match result {
        Some(Err(error)) => {
            let error: &(dyn std::error::Error + 'static) = &*error;
            tracing::debug!(remote = %info.remote_addr(), error = %DisplayChain(error), "connection ended with an error");
        }
        Some(Ok(())) => {}
        None => tracing::debug!(remote = %info.remote_addr(), "idle connection closed"),
    }
}

/// The client's certificate, validated once per connection (a connection's requests share it).
fn peer_certificate(
    connection: &rustls::ServerConnection,
    client_auth: Option<&ClientAuth>,
    info: ConnectionInfo,
) -> Option<PeerCertificate> {
    let chain = connection.peer_certificates().filter(|c| !c.is_empty())?;
    let valid = match client_auth {
        Some(client_auth) => client_auth.validate(chain),
        None => Err(CertificateRejection::NotChecked),
    };
    if let Err(reason) = &valid {
        tracing::info!(remote = %info.remote_addr(), %reason, "client certificate not valid: no certificate identity");
    }
    Some(PeerCertificate::new(chain.to_vec(), valid))
}

/// Runs a connection until it ends (`Some`) or stays idle for `idle` (`None`, and it is dropped).
async fn drive<F>(connection: F, activity: &Activity, idle: Duration) -> Option<F::Output>
where
    F: Future,
{
    let mut connection = std::pin::pin!(connection);
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            output = &mut connection => return Some(output),
            () = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it opened.
#[derive(Clone, Debug)]
struct Activity {
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    #[inline]
    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

pin_project! {
    /// An IO object that records when it last read or wrote a byte.
    struct ActivityIo<T> {
        #[pin]
        io: T,
        activity: Activity,
    }
}

impl<T: AsyncRead> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
