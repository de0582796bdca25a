//! The one accept loop every stand-in uses: plain or TLS connections, HTTP/1.1 and HTTP/2, each
//! request handed to an async handler, until a shutdown future completes.

use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// In a response's extensions: answer with a reset of the stream (`RST_STREAM` with this
/// reason) instead of the response, as IIS answers an HTTP/2 request it will only serve over
/// HTTP/1.1. Meant for HTTP/2 requests; over HTTP/1.1 the connection is closed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResetStream(pub(crate) h2::Reason);

/// A stand-in's server task: where it listens, and how to stop it. Dropping it stops it too.
#[derive(Debug)]
pub(crate) struct Running {
    addr: std::net::SocketAddr,
    tls: bool,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Serves `handler` on `listener` (TLS with `tls`) until `shutdown` is set.
    pub(crate) fn spawn<H, F, B>(
        listener: TcpListener,
        addr: std::net::SocketAddr,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
        shutdown: tokio::sync::watch::Sender<bool>,
        handler: H,
    ) -> Running
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let is_tls = tls.is_some();
        let mut stopped = shutdown.subscribe();
        let task = tokio::spawn(accept_loop(
            listener,
            tls.map(TlsAcceptor::from),
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
            handler,
        ));
        Running {
            addr,
            tls: is_tls,
            shutdown,
            task: Some(task),
        }
    }

    /// The address the server listens on.
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http(s)://host:port` of the server.
    pub(crate) fn base_url(&self) -> String {
        base_url(self.addr, self.tls)
    }

    /// Stops accepting, closes every connection, and waits for the server task.
    pub(crate) async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then closes every connection.
pub(crate) async fn accept_loop<H, F, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, tls.clone(), handler.clone()));
                }
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    // EMFILE and the like: back off instead of spinning on the error.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn serve_connection<H, F, B>(stream: TcpStream, tls: Option<TlsAcceptor>, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        let response = handler(request);
        async move {
            let response = response.await;
            match response.extensions().get::<ResetStream>() {
                // hyper resets the stream with the h2 reason it finds in the error.
                Some(ResetStream(reason)) => Err(h2::Error::from(*reason)),
                None => Ok(response),
            }
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let result = match tls {
        Some(acceptor) => {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(stream)) => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
        None => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// `http(s)://host:port` of a listener at `addr`, with an unspecified address replaced by the
/// loopback one a client can reach.
pub(crate) fn base_url(addr: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    format!("{scheme}://{ip}:{}", addr.port())
}
