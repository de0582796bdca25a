//! A webhook receiver for tests: records what it is sent and answers with scripted statuses.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::task::JoinSet;

use super::lock;
use crate::error::{Error, Result};
use crate::upstream::SeenRequest;

/// The path [`WebhookReceiver::url`] names, the gateway's change-event endpoint.
pub const RECEIVER_PATH: &str = "/events/compliance";

/// A plain-HTTP receiver on loopback that records every request and answers each with the next
/// scripted status, then with a fixed one. Stops when dropped.
///
/// ```
/// use http::StatusCode;
/// use seg_testbed::uem::WebhookReceiver;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> seg_testbed::Result<()> {
/// let receiver = WebhookReceiver::answering(&[StatusCode::SERVICE_UNAVAILABLE], StatusCode::OK).await?;
/// assert!(receiver.url().ends_with("/events/compliance"));
/// assert!(receiver.received().is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    _tasks: JoinSet<()>,
}

impl WebhookReceiver {
    /// A receiver answering `200 OK` to everything.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if no loopback port can be bound.
    pub async fn start() -> Result<Self> {
        Self::answering(&[], StatusCode::OK).await
    }

    /// A receiver answering the statuses of `script` in turn, then `then` to every later request.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if no loopback port can be bound.
    pub async fn answering(script: &[StatusCode], then: StatusCode) -> Result<Self> {
        let listener = crate::harness::local_listener().await?;
        let addr = listener.local_addr().map_err(|source| Error::Connect {
            addr: "the receiver's listener".into(),
            source,
        })?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let mut tasks = JoinSet::new();
        let recorded = seen.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let seen = recorded.clone();
                let script = script.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        answer(request, seen.clone(), script.clone(), then)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            seen,
            _tasks: tasks,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/events/compliance`.
    pub fn url(&self) -> String {
        format!("http://{}{RECEIVER_PATH}", self.addr)
    }

    /// The requests received so far, oldest first.
    pub fn received(&self) -> Vec<SeenRequest> {
        lock(&self.seen).clone()
    }
}

async fn answer(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    script: Arc<Mutex<VecDeque<StatusCode>>>,
    then: StatusCode,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    lock(&seen).push(SeenRequest {
        method: parts.method,
        version: parts.version,
        path: parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        headers: parts.headers,
        body,
    });
    let status = lock(&script).pop_front().unwrap_or(then);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}
