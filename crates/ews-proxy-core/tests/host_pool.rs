//! The host pool against real sockets: connections reused, half-read ones not, and a connection
//! that Exchange closed while it sat idle never costs a request.

use bytes::Bytes;
use ews_proxy_core::host_pool::HostPool;
use ews_proxy_core::proxy::Upstream;
use ews_proxy_core::tls::UpstreamTrust;
use ews_proxy_core::upstream::{PoolSettings, UpstreamClient};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A plain HTTP/1.1 upstream that counts the connections it accepted. Each connection answers
/// `per_connection` requests (keep-alive, no `Connection: close`) and is then closed by the
/// server, as a keep-alive timeout would; the body is `size` bytes.
async fn upstream(per_connection: usize, size: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                for _ in 0..per_connection {
                    // Requests here have no body: the head ends the request.
                    loop {
                        if let Some(end) = find(&buffer, b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            break;
                        }
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                    let mut response = head.into_bytes();
                    response.resize(response.len() + size, b'x');
                    if socket.write_all(&response).await.is_err() {
                        return;
                    }
                }
                // Closed after `per_connection` answers, without warning.
            });
        }
    });
    (url, accepted)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn pool(url: &str) -> HostPool {
    let client = UpstreamClient::new(&UpstreamTrust::default(), &PoolSettings::default()).unwrap();
    let upstream = Upstream::new(url.parse().unwrap(), Duration::from_secs(5)).unwrap();
    HostPool::new(&client, &upstream)
}

fn get() -> Request<ews_proxy_core::body::UpstreamBody> {
    Request::get("/EWS/Exchange.asmx")
        .header(http::header::HOST, "exchange.test")
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

#[tokio::test]
async fn requests_one_after_another_share_one_connection() {
    let (url, accepted) = upstream(usize::MAX, 64).await;
    let pool = pool(&url);
    for _ in 0..5 {
        let response = pool.send(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 64);
        assert_eq!(
            pool.open_connections(),
            (1, 0),
            "back in the pool once read"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_dropped_half_read_does_not_return_its_connection() {
    let (url, accepted) = upstream(usize::MAX, 256 * 1024).await;
    let pool = pool(&url);
    let mut response = pool.send(get()).await.unwrap();
    let first = response.body_mut().frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|data| data.len() < 256 * 1024));
    drop(response);
    assert_eq!(pool.open_connections(), (0, 0));

    let response = pool.send(get()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body.len(),
        256 * 1024,
        "the second request is not mixed with the first"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_closed_while_idle_costs_no_request() {
    // Every connection serves one request, then the server closes it without a word.
    let (url, accepted) = upstream(1, 16).await;
    let pool = pool(&url);
    for round in 1..=4 {
        let response = pool.send(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_unreachable_host_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = pool(&url).send(get()).await.unwrap_err();
    assert!(
        matches!(error, ews_proxy_core::host_pool::SendError::Connect { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_connection_still_sending_an_answered_upload_does_not_hold_the_next_request() {
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    // Exchange answers as soon as it has the head (an early 401 or 413 does), while the
    // client's body is still coming, and never ends: that connection is not free.
    let (url, accepted) = upstream(usize::MAX, 2).await;
    let pool = pool(&url);
    let endless = futures_util::stream::once(async {
        Ok::<_, ews_proxy_core::body::BoxError>(http_body::Frame::data(Bytes::from_static(
            b"<soap:Envelope>",
        )))
    })
    .chain(futures_util::stream::pending());
    let upload = Request::post("/EWS/Exchange.asmx")
        .header(http::header::HOST, "exchange.test")
        .header(http::header::TRANSFER_ENCODING, "chunked")
        .body(StreamBody::new(endless).boxed_unsync())
        .unwrap();
    let answered = pool.send(upload).await.unwrap();
    answered.into_body().collect().await.unwrap();

    let next = tokio::time::timeout(Duration::from_secs(5), async {
        let response = pool.send(get()).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .expect("the next request is not held behind the unfinished upload");
    assert_eq!(next.len(), 2);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "it went on a new connection"
    );
}
