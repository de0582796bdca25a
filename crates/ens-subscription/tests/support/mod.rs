//! Helpers shared by this crate's integration tests: an HTTP Exchange stand-in with short EWS
//! minutes, clients for its users, and tiny local HTTP servers with fixed answers.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ens_subscription::client::{EwsClient, HttpClient};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use seg_testbed::exchange::{ExchangeConfig, ExchangeHandle, ExchangeServer, User};
use seg_testbed::harness::{TEST_PASSWORD, basic_auth, local_listener};
use tokio::net::TcpListener;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A plain-HTTP Exchange stand-in for alice and bob whose EWS minute lasts `minute`.
pub async fn exchange(minute: Duration) -> ExchangeHandle {
    let mut config = ExchangeConfig::new(vec![
        User::new("alice@test.local", TEST_PASSWORD),
        User::new("bob@test.local", TEST_PASSWORD),
    ]);
    config.minute = minute;
    config.keepalive_interval = Duration::from_millis(100);
    config.push_timeout = Duration::from_secs(5);
    ExchangeServer::spawn(local_listener().await.unwrap(), None, config).unwrap()
}

/// A client of `url` for device `device` acting as `user`.
pub fn client(url: &str, user: &str, device: &str) -> EwsClient<HttpClient> {
    EwsClient::http(url.parse().unwrap())
        .header("x-device-id", device)
        .unwrap()
        .header("authorization", &basic_auth(user, TEST_PASSWORD))
        .unwrap()
}

/// Serves `service` over HTTP/1.1 on `listener` until the test ends.
pub fn serve<S>(listener: TcpListener, service: S) -> SocketAddr
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<Full<Bytes>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A server answering every request with this status, headers and body; returns its EWS URL.
pub async fn fixed_answer(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> String {
    let service = tower::service_fn(
        move |_request: http::Request<hyper::body::Incoming>| async move {
            let mut builder = http::Response::builder().status(status);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            Ok::<_, Infallible>(
                builder
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap(),
            )
        },
    );
    let addr = serve(local_listener().await.unwrap(), service);
    format!("http://{addr}/EWS/Exchange.asmx")
}

/// The body a [`gated`] service answers with: Exchange's, or the gate's refusal.
pub type GatedBody = http_body_util::Either<hyper::body::Incoming, Full<Bytes>>;

/// An HTTP service standing in for the gateway's compliance gate: while `blocked` holds, every
/// request gets `403` with `X-Compliance-Status: blocked; reason=device-wiped` and never reaches
/// Exchange; otherwise it is sent on. The real gateway is tested end to end elsewhere; this is
/// the part of its contract this crate reacts to.
pub fn gated(
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tower::util::BoxCloneSyncService<
    http::Request<Full<Bytes>>,
    http::Response<GatedBody>,
    ens_subscription::error::BoxError,
> {
    let http: HttpClient =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |request: http::Request<Full<Bytes>>| {
            let http = http.clone();
            let blocked = blocked.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if blocked {
                    let response = http::Response::builder()
                        .status(403)
                        .header("x-compliance-status", "blocked; reason=device-wiped")
                        .body(http_body_util::Either::Right(Full::new(Bytes::new())))?;
                    return Ok(response);
                }
                let response = http.request(request).await?;
                Ok::<_, ens_subscription::error::BoxError>(
                    response.map(http_body_util::Either::Left),
                )
            }
        },
    ))
}
