//! Scripted upstreams: tiny HTTP servers whose behaviour a test controls exactly, for proving what
//! a proxy does that no faithful Exchange would provoke on demand (stalling before headers,
//! sending a chunk only when told, echoing what arrived).
//!
//! The Exchange stand-in ([`crate::exchange`]) is the faithful peer; these are instruments.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use seg_testbed::upstream::ScriptedUpstream;
//! let echo = ScriptedUpstream::echo(None).await?;
//! // … send a request through the proxy to echo.url() …
//! let seen = echo.requests();
//! # let _ = seen;
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// Method.
    pub method: Method,
    /// The HTTP version it arrived in (HTTP/2 when the client picked `h2` by ALPN).
    pub version: http::Version,
    /// Path and query.
    pub path: String,
    /// Headers, as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// Response headers the echo upstream always sends, to test what a proxy passes back.
pub const ECHO_RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("connection", "keep-alive, x-hop-response"),
    ("x-hop-response", "must not reach the client"),
    ("keep-alive", "timeout=5"),
    (
        "set-cookie",
        "X-BackEndOverrideCookie=EXCH01~1942063382; path=/; HttpOnly",
    ),
    ("x-end-to-end", "kept"),
];

#[derive(Clone)]
enum Behaviour {
    /// 200 with the request body echoed and [`ECHO_RESPONSE_HEADERS`].
    Echo,
    /// Reads the request, then never answers until released.
    Stall(Arc<Notify>),
    /// 200 with a chunked body whose chunks the test sends.
    Stream(Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>),
}

/// A scripted upstream; stops when dropped.
#[derive(Debug)]
pub struct ScriptedUpstream {
    addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    release: Arc<Notify>,
    chunks: Option<mpsc::Sender<Bytes>>,
    _tasks: JoinSet<()>,
}

impl ScriptedUpstream {
    /// Answers 200, echoing the request body, with [`ECHO_RESPONSE_HEADERS`].
    pub async fn echo(tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<Self> {
        Self::spawn(tls, Behaviour::Echo, None).await
    }

    /// Reads each request and answers nothing until [`ScriptedUpstream::release`].
    pub async fn stalling() -> std::io::Result<Self> {
        let release = Arc::new(Notify::new());
        let mut upstream = Self::spawn(None, Behaviour::Stall(release.clone()), None).await?;
        upstream.release = release;
        Ok(upstream)
    }

    /// Answers the first request with 200 and a chunked body: each [`ScriptedUpstream::send_chunk`]
    /// is one chunk; [`ScriptedUpstream::end_stream`] ends the body.
    pub async fn streaming() -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel(16);
        let behaviour = Behaviour::Stream(Arc::new(tokio::sync::Mutex::new(receiver)));
        Self::spawn(None, behaviour, Some(sender)).await
    }

    async fn spawn(
        tls: Option<Arc<rustls::ServerConfig>>,
        behaviour: Behaviour,
        chunks: Option<mpsc::Sender<Bytes>>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        let acceptor = tls.clone().map(TlsAcceptor::from);
        let seen_by_server = seen.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let behaviour = behaviour.clone();
                let seen = seen_by_server.clone();
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        respond(request, behaviour.clone(), seen.clone())
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Ok(ScriptedUpstream {
            addr,
            tls: tls.is_some(),
            seen,
            release: Arc::new(Notify::new()),
            chunks,
            _tasks: tasks,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://localhost:PORT` (the test certificates name `localhost`).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Every request received so far, complete with body.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }

    /// Waits, at most `deadline`, until it has received at least `count` whole requests.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Timeout`] when they have not all come by then.
    pub async fn wait_for_requests(&self, count: usize, deadline: Duration) -> crate::Result<()> {
        let what = format!("{count} request(s) at the scripted upstream");
        crate::harness::wait_until(deadline, &what, || {
            let arrived = self.requests().len() >= count;
            async move { arrived }
        })
        .await
    }

    /// Lets stalled requests be answered (with 200, empty body).
    pub fn release(&self) {
        self.release.notify_waiters();
    }

    /// Sends one chunk of the streaming response; false when the response is gone.
    pub async fn send_chunk(&self, chunk: impl Into<Bytes>) -> bool {
        match &self.chunks {
            Some(sender) => sender.send(chunk.into()).await.is_ok(),
            None => false,
        }
    }

    /// Ends the streaming response.
    pub fn end_stream(&mut self) {
        self.chunks = None;
    }
}

type StreamedBody =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

async fn respond(
    request: Request<Incoming>,
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
) -> Result<Response<http_body_util::Either<http_body_util::Full<Bytes>, StreamedBody>>, Infallible>
{
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.to_string())
        .unwrap_or_default();
    // Registered before the request is recorded, so a release seen by a test that waited for the
    // recording cannot be missed.
    let release = match &behaviour {
        Behaviour::Stall(release) => Some(release.clone()),
        _ => None,
    };
    let released = release.as_ref().map(|release| release.notified());
    // A streaming test needs the request recorded before the response starts, and the echo
    // needs the whole body; both read the body first (it is small in every test).
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if let Ok(mut seen) = seen.lock() {
        seen.push(SeenRequest {
            method: parts.method,
            version: parts.version,
            path,
            headers: parts.headers,
            body: body.clone(),
        });
    }
    let full = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(http_body_util::Either::Left(http_body_util::Full::new(
            body,
        )));
        *response.status_mut() = status;
        response
    };
    match behaviour {
        Behaviour::Echo => {
            let mut response = full(StatusCode::OK, body);
            for (name, value) in ECHO_RESPONSE_HEADERS {
                response
                    .headers_mut()
                    .append(*name, http::HeaderValue::from_static(value));
            }
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/xml; charset=utf-8"),
            );
            Ok(response)
        }
        Behaviour::Stall(_) => {
            if let Some(released) = released {
                released.await;
            }
            Ok(full(StatusCode::OK, Bytes::new()))
        }
        Behaviour::Stream(receiver) => {
            let stream = futures_util::stream::unfold(receiver, |receiver| async move {
                let chunk = receiver.lock().await.recv().await?;
                Some((Ok(Frame::data(chunk)), receiver))
            });
            let body: StreamedBody = StreamBody::new(Box::pin(stream));
            let mut response = Response::new(http_body_util::Either::Right(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/xml; charset=utf-8"),
            );
            Ok(response)
        }
    }
}
