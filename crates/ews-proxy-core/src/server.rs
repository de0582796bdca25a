//! The listener: accepts TCP (and TLS) connections and serves a tower service on each, with the
//! limits a gateway on the internet needs, and graceful shutdown.
//!
//! - TLS with rustls when a [`rustls::ServerConfig`] is given (see [`crate::tls`]); plain HTTP
//!   otherwise, for deployments behind a TLS-terminating load balancer.
//! - HTTP/1.1 and HTTP/2 (by ALPN on TLS, by preface on plain connections).
//! - A cap on concurrent connections: at the cap the listener stops accepting until one closes.
//! - A header timeout (also bounding the TLS handshake) and an idle timeout: a connection that
//!   moves no byte either way for that long is closed. A streaming response that sends a
//!   keep-alive every few seconds is never idle. A service that waits, with the whole request
//!   in hand, for an answer that may be long in coming (an ActiveSync `Ping` is held for the
//!   device's heartbeat, up to 59 minutes, without a byte either way) pauses the idle timer for
//!   that wait through the [`IdleTimer`] in the request's extensions; its own timeout bounds it.
//! - Each request carries a [`ConnectionInfo`] in its extensions (client address, TLS or not),
//!   and a [`PeerCertificate`] when the client presented a certificate (see
//!   [`Server::with_client_auth`]).
//! - Shutdown: stop accepting, let in-flight requests finish for up to the grace period, then cut
//!   what is left. A connection whose requests only wait with their [`IdleTimer`] paused (an
//!   ActiveSync `Ping` held for its heartbeat) is closed at once: the device sends it again.
//! - An HTTP/1.1 connection over TLS that is quiet between requests is parked: hyper's state for
//!   it (16 KiB of buffers) is dropped until the next request's first byte arrives, so that an
//!   idle keep-alive connection costs the socket, the TLS state and a small task (≈ 12 KiB in
//!   all, see docs/benchmarks.md).
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
use crate::identity::ClientIdentity;
use crate::proxy::DisplayChain;
use crate::tls::{CertificateRejection, ClientAuth};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
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

/// The idle timer of the connection a request came on, in the extensions of every request the
/// [`Server`] serves.
///
/// A connection that moves no byte either way for [`ServerSettings::idle_timeout`] is closed.
/// A service that waits, with the whole request in hand, for an answer that may be long in
/// coming (the reverse proxy, for an ActiveSync `Ping` that Exchange holds for the device's
/// heartbeat) [pauses](IdleTimer::pause) it for that wait: the client owes nothing then, and its
/// silence is not idleness. The service's own timeout must bound the wait. While a request
/// still waits for the client's bytes the timer runs, so a client that stops mid-body is cut.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct IdleTimer(Option<Arc<ActivityState>>);

impl IdleTimer {
    /// A timer of no connection, for a request not served by a [`Server`]: pausing it does
    /// nothing.
    pub fn detached() -> Self {
        IdleTimer(None)
    }

    /// Pauses the timer until the returned guard is dropped; the connection's idle time then
    /// counts from its next byte.
    pub fn pause(&self) -> IdlePause {
        if let Some(state) = &self.0 {
            state.idle_paused.fetch_add(1, Ordering::Relaxed);
        }
        IdlePause(self.0.clone())
    }
}

/// A pause of a connection's [`IdleTimer`]; the timer runs again when it is dropped.
#[derive(Debug)]
#[must_use = "the timer runs again as soon as the pause is dropped"]
pub struct IdlePause(Option<Arc<ActivityState>>);

impl Drop for IdlePause {
    fn drop(&mut self) {
        if let Some(state) = &self.0 {
            state.idle_paused.fetch_sub(1, Ordering::Relaxed);
            // From now: not from the last byte before the wait, long past.
            state.touch();
        }
    }
}

/// The certificate a client presented on a TLS connection, and whether it is valid: in the
/// extensions of every request on that connection.
///
/// Only present when the listener asked for client certificates
/// ([`Server::with_client_auth`]) and the client sent one. In optional mode an invalid
/// certificate is still recorded, with the reason it is not valid; in required mode an invalid
/// one never completes the handshake. Cheap to clone: the clones of one connection's requests
/// share the certificate and what [`PeerCertificate::identity`] learnt from it.
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    chain: Arc<[CertificateDer<'static>]>,
    valid: Result<(), CertificateRejection>,
    identity: Arc<OnceLock<LearntIdentity>>,
}

/// The user a certificate names under one rule, learnt on a connection's first request.
#[derive(Debug)]
struct LearntIdentity {
    rule: u64,
    identity: Option<ClientIdentity>,
}

impl PartialEq for PeerCertificate {
    /// The same certificate chain with the same outcome; what was learnt from it does not count.
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain && self.valid == other.valid
    }
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
            identity: Arc::default(),
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

    /// The user the valid certificate names, as `learn` reads it from the DER, learnt once per
    /// connection: the first request's call runs `learn`, the connection's later requests get
    /// a copy of its answer. (Parsing the certificate and hashing it for its fingerprint, for
    /// every request of a keep-alive connection, was a quarter of the gateway's instructions
    /// per request with certificate-based authentication.) `None` without a valid certificate.
    ///
    /// `rule` names how `learn` reads the certificate (e.g. which names it falls back to): the
    /// answer is kept for the first `rule` asked; a call with another `rule` runs its `learn`
    /// and keeps nothing.
    pub fn identity(
        &self,
        rule: u64,
        learn: impl FnOnce(&CertificateDer<'static>) -> Option<ClientIdentity>,
    ) -> Option<ClientIdentity> {
        let end_entity = self.valid_end_entity()?;
        let mut learn = Some(learn);
        let learnt = self.identity.get_or_init(|| LearntIdentity {
            rule,
            identity: learn.take().and_then(|learn| learn(end_entity)),
        });
        match learn {
            // Another rule than the one kept: learnt afresh, not kept.
            Some(learn) if learnt.rule != rule => learn(end_entity),
            _ => learnt.identity.clone(),
        }
    }
}

/// Limits and timeouts of a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Time allowed for the TLS handshake and for each request's headers to arrive. (seg-proxy
    /// also allows this long for the start of an EWS body it reads to learn the operation: see
    /// [`crate::operation::EwsOperationLayer::with_read_timeout`].)
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection with no traffic either way for this long is closed; not while its
    /// [`IdleTimer`] is paused (the service's own timeout bounds that).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once; at the cap, new ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Connections one client address may have open at once; one more is closed as soon as it
    /// is accepted (before any TLS), and the first refusal of an address is logged. `0` (the
    /// default): no cap, since mobile carriers put many devices behind one address (NAT).
    pub max_connections_per_address: usize,
    /// On shutdown, how long in-flight requests may take to finish before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long an HTTP/1.1 connection over TLS must be quiet, with no request in flight, before
    /// it is parked: hyper's state for it (two 8 KiB buffers and the rest) is dropped, and the
    /// connection waits for its next request with only the socket and the TLS state (see the
    /// [module docs](self)). Long enough that a client sending requests back to back never pays
    /// for the rebuild; at least 1 ms.
    #[serde(with = "humantime_serde")]
    pub park_after: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            max_connections_per_address: 0,
            shutdown_grace: Duration::from_secs(30),
            park_after: Duration::from_millis(250),
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
            + Sync
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
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            .keep_alive(true);
        let builders = Arc::new(Builders {
            auto: builder,
            http1,
        });
        // Shared by every connection: a connection holds a pointer, not a copy of the stack.
        let service = Arc::new(service);
        let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
        let per_address = (settings.max_connections_per_address > 0)
            .then(|| Arc::new(AddressCounts::new(settings.max_connections_per_address)));
        let (stopping, stop) = watch::channel(false);
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
            let address_slot = match &per_address {
                Some(counts) => match AddressCounts::acquire(counts, remote.ip()) {
                    Some(slot) => Some(slot),
                    None => continue, // dropping the stream closes it
                },
                None => None,
            };
            let _ = stream.set_nodelay(true);
            let info = ConnectionInfo::new(remote, tls.is_some());
            let connection = Connection {
                info,
                service: service.clone(),
                builders: builders.clone(),
                settings: settings.clone(),
                stop: stop.clone(),
            };
            let tls = tls.clone().map(|acceptor| (acceptor, client_auth.clone()));
            connections.spawn(async move {
                let _permit = permit;
                let _address_slot = address_slot;
                connection.serve(stream, tls).await;
            });
        }
        drop(listener);
        tracing::info!(%local, open = connections.len(), "shutting down: draining connections");
        let _ = stopping.send(true);
        let drained = async { while connections.join_next().await.is_some() {} };
        tokio::select! {
            () = drained => tracing::info!(%local, "all connections drained"),
            () = tokio::time::sleep(settings.shutdown_grace) => {
                tracing::warn!(%local, open = connections.len(), "shutdown grace period over: cutting the connections left");
            }
        }
        connections.shutdown().await;
        Ok(())
    }
}

/// Open connections per client address, for `max_connections_per_address`.
struct AddressCounts {
    max: usize,
    /// Per address: open connections, and whether a refusal was logged since it had none.
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (usize, bool)>>,
}

impl AddressCounts {
    fn new(max: usize) -> Self {
        AddressCounts {
            max,
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// A place for one more connection from `ip`, unless it is at the cap.
    fn acquire(counts: &Arc<Self>, ip: std::net::IpAddr) -> Option<AddressSlot> {
        // An IPv4 client on a dual-stack socket is the same client as over IPv4.
        let ip = ip.to_canonical();
        let mut open = counts.lock();
        let (count, logged) = open.entry(ip).or_insert((0, false));
        if *count >= counts.max {
            if !*logged {
                *logged = true;
                tracing::warn!(
                    client = %ip,
                    max = counts.max,
                    "connections from one address at server.max_connections_per_address: closing the new ones"
                );
            }
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: counts.clone(),
            ip,
        })
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, (usize, bool)>> {
        // The map is valid whatever a panicking holder left.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection's place in its address's count, given back when the connection ends.
struct AddressSlot {
    counts: Arc<AddressCounts>,
    ip: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.lock();
        if let Some((count, _)) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The connection builders of a listener, made once.
struct Builders {
    /// HTTP/1.1 or HTTP/2 by preface: plain connections and TLS ones that chose `h2`.
    auto: auto::Builder<TokioExecutor>,
    /// TLS connections that chose HTTP/1.1 (or no protocol) by ALPN.
    http1: http1::Builder,
}

/// The shortest [`ServerSettings::park_after`] used: with zero, a connection with a request in
/// flight would re-check in a busy loop.
const MIN_PARK_AFTER: Duration = Duration::from_millis(1);

/// What one connection needs from its listener.
struct Connection<S> {
    info: ConnectionInfo,
    service: Arc<S>,
    builders: Arc<Builders>,
    settings: Arc<ServerSettings>,
    stop: watch::Receiver<bool>,
}

impl<S, B> Connection<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async fn serve(mut self, stream: TcpStream, tls: Option<(TlsAcceptor, Option<ClientAuth>)>) {
        let info = self.info;
        let activity = Activity::new();
        let result = match tls {
            Some((acceptor, client_auth)) => {
                let handshake =
                    tokio::time::timeout(self.settings.header_timeout, acceptor.accept(stream));
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
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = ActivityIo {
                    io: stream,
                    activity: activity.clone(),
                };
                let service = self.hyper_service(peer, &activity);
                if h2 {
                    self.serve_auto(io, service, &activity).await
                } else {
                    // HTTP/2 over TLS is only ever chosen by ALPN (RFC 9113, section 3.2).
                    self.serve_http1(io, service, &activity).await
                }
            }
            None => {
                let io = ActivityIo {
                    io: stream,
                    activity: activity.clone(),
                };
                let service = self.hyper_service(None, &activity);
                self.serve_auto(io, service, &activity).await
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

    fn hyper_service(
        &self,
        peer: Option<PeerCertificate>,
        activity: &Activity,
    ) -> ConnectionService<S> {
        ConnectionService {
            service: self.service.clone(),
            ready: std::sync::Mutex::new(None),
            info: self.info,
            peer: peer.map(Arc::new),
            activity: activity.clone(),
        }
    }

    /// HTTP/1.1 or HTTP/2 by preface, until the connection ends, idles out or the server stops.
    async fn serve_auto<T>(
        &mut self,
        io: ActivityIo<T>,
        service: ConnectionService<S>,
        activity: &Activity,
    ) -> Option<Result<(), BoxError>>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Boxed: the task of an HTTP/1.1 connection does not carry room for HTTP/2's state.
        let mut connection = Box::pin(
            self.builders
                .auto
                .serve_connection(TokioIo::new(io), service)
                .into_owned(),
        );
        let idle = self.settings.idle_timeout;
        let mut stopping = false;
        loop {
            let deadline = activity.idle_deadline(idle);
            tokio::select! {
                output = connection.as_mut() => return Some(output),
                () = tokio::time::sleep_until(deadline) => {
                    if activity.idle_for(idle, Instant::now()) {
                        return None;
                    }
                }
                _ = self.stop.wait_for(|stop| *stop), if !stopping => {
                    if activity.only_paused_waits() {
                        return None;
                    }
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }

    /// HTTP/1.1 on a TLS connection, parked between requests (see [`ServerSettings::park_after`]).
    async fn serve_http1<T>(
        &mut self,
        io: ActivityIo<T>,
        service: ConnectionService<S>,
        activity: &Activity,
    ) -> Option<Result<(), BoxError>>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let idle = self.settings.idle_timeout;
        let park_after = self.settings.park_after.max(MIN_PARK_AFTER);
        let mut io = Prefixed {
            prefix: Bytes::new(),
            io,
        };
        let mut service = service;
        loop {
            // Parked: wait for the first byte of the next request with no HTTP state.
            if io.prefix.is_empty() {
                let mut byte = [0u8; 1];
                loop {
                    let deadline = activity.last() + idle;
                    let closing = tokio::select! {
                        read = io.io.read(&mut byte) => match read {
                            Ok(0) => true,
                            Ok(_) => break,
                            Err(error) => return Some(Err(error.into())),
                        },
                        () = tokio::time::sleep_until(deadline) => {
                            if activity.last() + idle <= Instant::now() {
                                return None;
                            }
                            false
                        }
                        _ = self.stop.wait_for(|stop| *stop) => true,
                    };
                    if closing {
                        // A task of its own: awaited here, the close would take room in this future
                        // for the whole life of the connection.
                        tokio::spawn(close(io, idle));
                        return Some(Ok(()));
                    }
                }
                io.prefix = Bytes::copy_from_slice(&byte);
            }
            let mut connection = Box::pin(
                self.builders
                    .http1
                    .serve_connection(TokioIo::new(io), service),
            );
            let mut stopping = false;
            let mut parking = false;
            let mut next_check = Instant::now() + park_after;
            loop {
                let idle_deadline = activity.idle_deadline(idle);
                let deadline = if stopping || parking {
                    idle_deadline
                } else {
                    (activity.last() + park_after)
                        .max(next_check)
                        .min(idle_deadline)
                };
                tokio::select! {
                    output = std::future::poll_fn(|cx| connection.as_mut().poll_without_shutdown(cx)) => {
                        if let Err(error) = output {
                            return Some(Err(error.into()));
                        }
                        break;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        let now = Instant::now();
                        if idle_deadline <= now && activity.idle_for(idle, now) {
                            return None;
                        }
                        if !stopping && !parking {
                            if activity.parkable(park_after, now) {
                                parking = true;
                                connection.as_mut().graceful_shutdown();
                            } else {
                                next_check = now + park_after;
                            }
                        }
                    }
                    _ = self.stop.wait_for(|stop| *stop), if !stopping => {
                        if activity.only_paused_waits() {
                            return None;
                        }
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            let parts = Pin::into_inner(connection).into_parts();
            if !parking || stopping {
                // hyper left the IO open (`poll_without_shutdown`): close it as hyper would
                // have, with TLS's close_notify.
                tokio::spawn(close(parts.io.into_inner(), idle));
                return Some(Ok(()));
            }
            service = parts.service;
            service.release();
            io = parts.io.into_inner();
            if !parts.read_buf.is_empty() {
                activity.state.parkable.store(false, Ordering::Relaxed);
                // Bytes of a request that had begun: hand them to the next connection, and do
                // not park again before that request is answered.
                io.prefix = if io.prefix.is_empty() {
                    parts.read_buf
                } else {
                    let mut joined = Vec::with_capacity(io.prefix.len() + parts.read_buf.len());
                    joined.extend_from_slice(&parts.read_buf);
                    joined.extend_from_slice(&io.prefix);
                    joined.into()
                };
            }
        }
    }
}

/// Shuts the connection down (TLS close_notify, then FIN), giving up after `limit`.
async fn close<T: AsyncWrite + Unpin>(mut io: T, limit: Duration) {
    let _ = tokio::time::timeout(limit, io.shutdown()).await;
}

/// The hyper service of one connection: the listener's shared service, with the connection's
/// [`ConnectionInfo`] (and [`PeerCertificate`]) in each request's extensions.
struct ConnectionService<S> {
    service: Arc<S>,
    /// A clone of `service` kept from one request to the next: cloning the whole stack (a
    /// boxed service of about 1.6 KiB, with its `Arc`s) for every request of a keep-alive
    /// connection showed in profiles. HTTP/1.1 calls one request at a time, so it is always
    /// free then; HTTP/2's concurrent calls clone when it is taken. Dropped when the
    /// connection parks, so that an idle connection does not hold it.
    ready: std::sync::Mutex<Option<Box<S>>>,
    info: ConnectionInfo,
    peer: Option<Arc<PeerCertificate>>,
    activity: Activity,
}

impl<S> ConnectionService<S> {
    /// Drops the kept clone of the stack (the connection goes quiet).
    fn release(&mut self) {
        if let Ok(ready) = self.ready.get_mut() {
            *ready = None;
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnectionService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<InFlightBody<B>>;
    type Error = Infallible;
    type Future = ConnectionFuture<S>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info);
        if let Some(peer) = &self.peer {
            request
                .extensions_mut()
                .insert(PeerCertificate::clone(peer));
        }
        request
            .extensions_mut()
            .insert(IdleTimer(Some(self.activity.state.clone())));
        let guard = Some(InFlight::new(&self.activity));
        let kept = self
            .ready
            .try_lock()
            .ok()
            .and_then(|mut ready| ready.take());
        let mut service = kept.unwrap_or_else(|| Box::new(S::clone(&self.service)));
        // tower's contract: `call` only after `poll_ready` said ready. The gateway's layers
        // are always ready; one that is not gets its own clone, driven by `Oneshot`.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let state = match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {
                // Boxed: hyper's HTTP/1.1 connection must be `Unpin` to be taken apart when it
                // parks.
                let future = Box::pin(service.call(request));
                if let Ok(mut ready) = self.ready.try_lock() {
                    *ready = Some(service);
                }
                CallState::Called(future)
            }
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => {
                CallState::Waiting(Box::pin(tower::ServiceExt::oneshot(*service, request)))
            }
        };
        ConnectionFuture { state, guard }
    }
}

/// Response future of [`ConnectionService`].
struct ConnectionFuture<S: Service<Request<Incoming>>> {
    state: CallState<S>,
    guard: Option<InFlight>,
}

enum CallState<S: Service<Request<Incoming>>> {
    Called(Pin<Box<S::Future>>),
    Waiting(Pin<Box<tower::util::Oneshot<S, Request<Incoming>>>>),
}

impl<S, B> Future for ConnectionFuture<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Output = Result<Response<InFlightBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = match &mut this.state {
            CallState::Called(future) => std::task::ready!(future.as_mut().poll(cx)),
            CallState::Waiting(oneshot) => std::task::ready!(oneshot.as_mut().poll(cx)),
        };
        let response = match response {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let guard = this
            .guard
            .take()
            .expect("ConnectionFuture polled after it completed");
        Poll::Ready(Ok(response.map(|body| InFlightBody { body, guard })))
    }
}

/// A request being served: from the call of the service until its response body is done.
struct InFlight(Arc<ActivityState>);

impl InFlight {
    fn new(activity: &Activity) -> Self {
        activity.state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Answered: what is read from now on belongs to the next request.
            self.0.parkable.store(true, Ordering::Relaxed);
        }
    }
}

pin_project! {
    /// A response body that marks its request in flight until it is dropped.
    struct InFlightBody<B> {
        #[pin]
        body: B,
        guard: InFlight,
    }
}

impl<B: Body> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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

/// When a connection last moved a byte (in milliseconds since it opened), how many requests it
/// has in flight, and whether it may be parked.
#[derive(Clone, Debug)]
struct Activity {
    state: Arc<ActivityState>,
}

#[derive(Debug)]
struct ActivityState {
    opened: Instant,
    last_ms: AtomicU64,
    /// Requests called and not yet answered to the end of their body.
    in_flight: AtomicUsize,
    /// Pauses of the idle timer ([`IdlePause`]) alive now: the connection is not idle.
    idle_paused: AtomicUsize,
    /// The last write (or flush) of the connection could not complete.
    write_blocked: AtomicBool,
    /// No byte read since the last response was answered: hyper holds no part of a next
    /// request.
    parkable: AtomicBool,
}

impl ActivityState {
    /// Marks a byte moved now.
    #[inline]
    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            state: Arc::new(ActivityState {
                opened: Instant::now(),
                last_ms: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                idle_paused: AtomicUsize::new(0),
                write_blocked: AtomicBool::new(false),
                parkable: AtomicBool::new(false),
            }),
        }
    }

    #[inline]
    fn touch(&self) {
        self.state.touch();
    }

    fn last(&self) -> Instant {
        self.state.opened + Duration::from_millis(self.state.last_ms.load(Ordering::Relaxed))
    }

    /// Whether the connection has been idle for `idle` at `now`: no byte either way for that
    /// long, and its idle timer not paused.
    fn idle_for(&self, idle: Duration, now: Instant) -> bool {
        self.last() + idle <= now && !self.idle_paused()
    }

    /// When to look again whether the connection is idle: `idle` after its last byte; while
    /// the timer is paused (its end wakes no one here), `idle` from now.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.idle_paused() {
            Instant::now() + idle
        } else {
            self.last() + idle
        }
    }

    fn idle_paused(&self) -> bool {
        self.state.idle_paused.load(Ordering::Relaxed) > 0
    }

    /// Whether every request in flight waits, its idle timer paused, for an answer that may
    /// be an hour in coming (an ActiveSync `Ping`): on shutdown such a connection is closed at
    /// once rather than at the end of the grace period. Nothing is lost: the request was only
    /// waiting, and the device sends it again, to another node.
    fn only_paused_waits(&self) -> bool {
        let paused = self.state.idle_paused.load(Ordering::Relaxed);
        paused > 0 && paused >= self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the HTTP/1.1 connection is between requests, quiet for `quiet`: nothing in
    /// flight, nothing left to write, no byte of a next request read.
    fn parkable(&self, quiet: Duration, now: Instant) -> bool {
        let state = &self.state;
        self.last() + quiet <= now
            && state.in_flight.load(Ordering::Relaxed) == 0
            && !state.write_blocked.load(Ordering::Relaxed)
            && state.parkable.load(Ordering::Relaxed)
    }

    #[inline]
    fn wrote<T>(&self, result: &Poll<io::Result<T>>) {
        self.state
            .write_blocked
            .store(result.is_pending(), Ordering::Relaxed);
    }
}

pin_project! {
    /// An IO object that begins with bytes already read from it.
    struct Prefixed<T> {
        prefix: Bytes,
        #[pin]
        io: T,
    }
}

impl<T: AsyncRead> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.is_empty() {
            return this.io.poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for Prefixed<T> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, data)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
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
            this.activity.state.parkable.store(false, Ordering::Relaxed);
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
        this.activity.wrote(&result);
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
        this.activity.wrote(&result);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let result = this.io.poll_flush(cx);
        this.activity.wrote(&result);
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_idle_timer_keeps_the_connection_and_is_looked_at_again_later() {
        let activity = Activity::new();
        let idle = Duration::from_secs(300);
        // An hour without a byte, as under a Ping that waits for its heartbeat.
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(activity.idle_for(idle, later));

        let pause = IdleTimer(Some(activity.state.clone())).pause();
        assert!(!activity.idle_for(idle, later));
        // Not a deadline already past, which would wake the connection's loop over and over.
        assert!(activity.idle_deadline(idle) > Instant::now() + idle / 2);

        drop(pause);
        assert!(activity.idle_for(idle, later));
        // The clock runs again from the pause's end.
        assert!(activity.last() + idle > Instant::now());
        assert_eq!(activity.idle_deadline(idle), activity.last() + idle);
    }

    #[test]
    fn a_connections_requests_learn_the_certificates_user_once() {
        use crate::identity::{CertificateFingerprint, IdentitySource};
        use std::cell::Cell;
        let alice = ClientIdentity {
            user: "alice@corp.example".into(),
            source: IdentitySource::Certificate {
                fingerprint: CertificateFingerprint([7; 32]),
            },
        };
        let learnt = Cell::new(0);
        let learn = |_: &CertificateDer<'static>| {
            learnt.set(learnt.get() + 1);
            Some(alice.clone())
        };
        let peer = PeerCertificate::new(vec![CertificateDer::from(vec![0x30, 0])], Ok(()));
        // Each request of the connection has its own clone.
        let first_request = peer.clone();
        let second_request = peer.clone();
        assert_eq!(first_request.identity(1, learn), Some(alice.clone()));
        assert_eq!(second_request.identity(1, learn), Some(alice.clone()));
        assert_eq!(learnt.get(), 1);
        // Another rule learns for itself and is not kept in place of the first.
        let bob = ClientIdentity {
            user: "bob@corp.example".into(),
            ..alice.clone()
        };
        assert_eq!(peer.identity(2, |_| Some(bob.clone())), Some(bob));
        assert_eq!(peer.identity(1, learn), Some(alice.clone()));
        assert_eq!(learnt.get(), 1);
        // An invalid certificate names nobody, and is not even read.
        let invalid = PeerCertificate::new(
            vec![CertificateDer::from(vec![0x30, 0])],
            Err(CertificateRejection::NotChecked),
        );
        assert_eq!(invalid.identity(1, learn), None);
        assert_eq!(learnt.get(), 1);
    }
}
