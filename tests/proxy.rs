//! The EWS reverse proxy over real sockets: routing, header hygiene, streaming, limits, faults,
//! upstream TLS, and shutdown. Exchange's part is played by scripted upstreams that do exactly
//! what each test needs; the faithful Exchange stand-in is exercised in `ews_operations.rs`.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use seg_proxy::Gateway;
use seg_testbed::client::HttpClient;
use seg_testbed::pki::{self, TestPki};
use seg_testbed::upstream::ScriptedUpstream;
use std::time::Duration;
use support::*;

const GET_ITEM: &str = r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="AAMk1"/></m:ItemIds></m:GetItem>"#;

fn client() -> HttpClient {
    HttpClient::accepting_any_certificate()
}

#[tokio::test]
async fn ews_paths_are_served_in_any_case() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let gateway = start(config_for(&exchange.url())).await;
    for path in [
        "/EWS/Exchange.asmx",
        "/ews/exchange.asmx",
        "/Ews/Services.wsdl",
    ] {
        let url = format!("{}{path}", http_base(&gateway));
        let response = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let paths: Vec<String> = exchange.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/EWS/Exchange.asmx",
            "/ews/exchange.asmx",
            "/Ews/Services.wsdl"
        ]
    );
}

#[tokio::test]
async fn disabled_ews_proxy_answers_404_and_forwards_nothing() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let mut config = config_for(&exchange.url());
    config.ews.enable_proxy = false;
    let gateway = start(config).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let response = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(exchange.requests().is_empty());
}

#[tokio::test]
async fn paths_outside_ews_answer_404() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let gateway = start(config_for(&exchange.url())).await;
    for path in ["/owa/", "/EWSX", "/Microsoft-Server-ActiveSync"] {
        let url = format!("{}{path}", http_base(&gateway));
        let response = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert!(exchange.requests().is_empty());
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways_and_forwarded_headers_set() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let gateway = start(config_for(&exchange.url())).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let mut request = soap_request(&url, GET_ITEM);
    let headers = request.headers_mut();
    headers.insert("host", "seg.example.com".parse().unwrap());
    headers.insert("connection", "keep-alive, x-hop-request".parse().unwrap());
    headers.insert("x-hop-request", "1".parse().unwrap());
    headers.insert("keep-alive", "timeout=9".parse().unwrap());
    headers.insert("te", "trailers".parse().unwrap());
    headers.insert(
        "proxy-authorization",
        "Basic cHJveHk6c2VjcmV0".parse().unwrap(),
    );
    headers.insert("x-forwarded-for", "10.9.8.7".parse().unwrap());
    headers.insert("x-forwarded-host", "evil.example".parse().unwrap());
    headers.insert("x-forwarded-proto", "https".parse().unwrap());

    let response = client().send(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let seen = exchange.requests().pop().unwrap().headers;
    for gone in [
        "connection",
        "x-hop-request",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert!(seen.get(gone).is_none(), "{gone} reached exchange");
    }
    assert_eq!(seen["host"], exchange.addr().to_string());
    assert_eq!(seen["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "seg.example.com");
    assert_eq!(seen["x-forwarded-proto"], "http");
    let back = response.headers();
    assert!(back.get("x-hop-response").is_none());
    assert!(back.get("keep-alive").is_none());
    assert_eq!(back["x-end-to-end"], "kept");
}

#[tokio::test]
async fn affinity_headers_and_cookie_pass_unchanged_both_ways() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let gateway = start(config_for(&exchange.url())).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let mut request = soap_request(&url, GET_ITEM);
    let headers = request.headers_mut();
    headers.insert("x-anchormailbox", "alice@test.local".parse().unwrap());
    headers.insert("x-preferserveraffinity", "true".parse().unwrap());
    headers.insert(
        "cookie",
        "X-BackEndOverrideCookie=EXCH01~1942063382; other=1"
            .parse()
            .unwrap(),
    );

    let response = client().send(request).await.unwrap();

    let seen = exchange.requests().pop().unwrap().headers;
    assert_eq!(seen["x-anchormailbox"], "alice@test.local");
    assert_eq!(seen["x-preferserveraffinity"], "true");
    assert_eq!(
        seen["cookie"],
        "X-BackEndOverrideCookie=EXCH01~1942063382; other=1"
    );
    assert_eq!(
        response.headers()["set-cookie"],
        "X-BackEndOverrideCookie=EXCH01~1942063382; path=/; HttpOnly"
    );
}

#[tokio::test]
async fn request_body_reaches_exchange_byte_for_byte() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let gateway = start(config_for(&exchange.url())).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let response = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
    assert_eq!(text(response).await, soap(GET_ITEM));
    assert_eq!(
        exchange.requests().pop().unwrap().body,
        soap(GET_ITEM).as_bytes()
    );
}

#[tokio::test]
async fn streaming_response_reaches_the_client_chunk_by_chunk() {
    let mut exchange = ScriptedUpstream::streaming().await.unwrap();
    let gateway = start(config_for(&exchange.url())).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let request = soap_request(&url, "<m:GetStreamingEvents/>");
    let response = tokio::spawn(async move { client().send(request).await.unwrap() });

    // Each chunk is sent only after the previous one reached the client: a proxy that buffered
    // the body (or waited for its end) would never deliver the first one.
    assert!(exchange.send_chunk("<Envelope>1</Envelope>").await);
    let mut body = tokio::time::timeout(STEP, response)
        .await
        .unwrap()
        .unwrap()
        .into_body();
    assert_eq!(
        next_chunk(&mut body).await.unwrap(),
        "<Envelope>1</Envelope>"
    );
    assert!(exchange.send_chunk("<Envelope>2</Envelope>").await);
    assert_eq!(
        next_chunk(&mut body).await.unwrap(),
        "<Envelope>2</Envelope>"
    );
    exchange.end_stream();
    assert_eq!(next_chunk(&mut body).await, None);
}

#[tokio::test]
async fn exchange_timeout_bounds_headers_not_a_streaming_body() {
    let exchange = ScriptedUpstream::streaming().await.unwrap();
    let mut config = config_for(&exchange.url());
    config.exchange.timeout = Duration::from_millis(300);
    let gateway = start(config).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let request = soap_request(&url, "<m:GetStreamingEvents/>");
    let response = tokio::spawn(async move { client().send(request).await.unwrap() });
    assert!(exchange.send_chunk("first").await);
    let response = tokio::time::timeout(STEP, response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap(), "first");

    // The quiet spell between chunks is what is under test, so time must really pass here.
    tokio::time::sleep(Duration::from_millis(900)).await;

    assert!(exchange.send_chunk("after three timeouts").await);
    assert_eq!(next_chunk(&mut body).await.unwrap(), "after three timeouts");
}

#[tokio::test]
async fn announced_oversized_body_gets_413_and_nothing_is_forwarded() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let mut config = config_for(&exchange.url());
    config.ews.max_body_size = 1024;
    let gateway = start(config).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let big = format!("<m:CreateItem>{}</m:CreateItem>", "x".repeat(2048));
    let response = client().send(soap_request(&url, &big)).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["x-seg-fault"], "body-too-large");
    assert!(text(response).await.contains("ErrorInvalidRequest"));
    assert!(exchange.requests().is_empty());
}

#[tokio::test]
async fn chunked_oversized_body_gets_413() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let mut config = config_for(&exchange.url());
    config.ews.max_body_size = 1024;
    let gateway = start(config).await;
    let stream = tokio::net::TcpStream::connect(gateway.http_addr().unwrap())
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    // No Content-Length: the body is sent chunked, so only counting can catch it.
    let chunks = [soap("<m:CreateItem>").into_bytes(), vec![b'x'; 4096]]
        .into_iter()
        .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(chunk))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let request = Request::post("/EWS/Exchange.asmx")
        .header("host", "seg")
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(STEP, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["x-seg-fault"], "body-too-large");
}

#[tokio::test]
async fn unreachable_exchange_gives_a_502_soap_fault() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let gateway = start(config_for(&format!("http://{closed}"))).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let response = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["x-seg-fault"], "upstream-unreachable");
    assert_eq!(
        response.headers()["content-type"],
        "text/xml; charset=utf-8"
    );
    let body = text(response).await;
    assert!(body.contains("<faultcode"), "{body}");
    assert!(
        body.contains(">ErrorConnectionFailed</e:ResponseCode>"),
        "{body}"
    );
}

#[tokio::test]
async fn stalled_exchange_gives_a_504_soap_fault() {
    let exchange = ScriptedUpstream::stalling().await.unwrap();
    let mut config = config_for(&exchange.url());
    config.exchange.timeout = Duration::from_millis(300);
    let gateway = start(config).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let response = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(response.headers()["x-seg-fault"], "upstream-timeout");
    assert!(
        text(response)
            .await
            .contains(">ErrorTimeoutExpired</e:ResponseCode>")
    );
}

/// An ActiveSync `command` of alice's iPhone `EAS1` to the gateway, with a WBXML `body`.
fn activesync_request(
    gateway: &Gateway,
    command: &str,
    body: &'static [u8],
) -> Request<Full<Bytes>> {
    let url = format!(
        "{}/Microsoft-Server-ActiveSync?Cmd={command}&User=alice&DeviceId=EAS1&DeviceType=iPhone",
        http_base(gateway)
    );
    Request::post(url)
        .header("content-type", "application/vnd.ms-sync.wbxml")
        .body(Full::new(Bytes::from_static(body)))
        .expect("valid request")
}

/// ActiveSync's `Ping` and `Sync` wait at Exchange for as long as the device's heartbeat (up to
/// 59 minutes) with no byte either way: neither `exchange.timeout` nor the client connection's
/// idle timeout may end them (`exchange.hanging_timeout` does). Other requests keep
/// `exchange.timeout`.
#[tokio::test]
async fn pings_and_syncs_wait_past_the_exchange_and_idle_timeouts() {
    let exchange = ScriptedUpstream::stalling().await.unwrap();
    let mut config = config_for(&exchange.url());
    config.activesync.enable_proxy = true;
    config.exchange.timeout = Duration::from_millis(200);
    config.server.idle_timeout = Duration::from_millis(300);
    let gateway = start(config).await;
    let base = http_base(&gateway);
    // A Ping without a body (the heartbeat the device sent last time), a Sync with one.
    let waiting = [
        ("Ping", &b""[..]),
        ("Sync", &b"\x03\x01\x6a\x00\x00\x00\x45\x01"[..]),
    ]
    .map(|(command, body)| {
        let request = activesync_request(&gateway, command, body);
        tokio::spawn(async move { client().send(request).await })
    });
    exchange.wait_for_requests(2, STEP).await.unwrap();

    // EWS requests Exchange holds as long get 504 when `exchange.timeout` is over: after two
    // of them, one after the other, the Ping and the Sync have waited longer than both
    // timeouts.
    let url = format!("{base}/EWS/Exchange.asmx");
    for _ in 0..2 {
        let ews = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
        assert_eq!(ews.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    assert!(
        waiting.iter().all(|request| !request.is_finished()),
        "a Ping or Sync was answered or cut before Exchange answered"
    );

    exchange.release();
    for request in waiting {
        let answered = tokio::time::timeout(STEP, request)
            .await
            .expect("answered once Exchange answers")
            .unwrap()
            .expect("the connection was kept");
        assert_eq!(answered.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn untrusted_exchange_certificate_gives_a_502_tls_fault() {
    let untrusted = pki::self_signed(&["localhost"]).unwrap();
    let exchange = ScriptedUpstream::echo(Some(untrusted.server_config().unwrap()))
        .await
        .unwrap();
    let gateway = start(config_for(&exchange.url())).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let response = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["x-seg-fault"], "upstream-tls");
    assert!(exchange.requests().is_empty());
}

#[tokio::test]
async fn trust_store_admits_a_private_ca_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let exchange = ScriptedUpstream::echo(Some(pki.server_config().unwrap()))
        .await
        .unwrap();
    let mut config = config_for(&exchange.url());
    config.exchange.trust_store = Some(pki.files().unwrap().ca.clone());
    let gateway = start(config).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let response = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(exchange.requests().len(), 1);
}

/// An echo upstream over TLS that offers HTTP/2 by ALPN as Exchange on IIS 10 does, and a
/// gateway in front of it (with `change` applied to its configuration).
async fn http2_exchange_and_gateway(
    change: impl FnOnce(&mut seg_proxy::config::Config),
) -> (ScriptedUpstream, Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let offers_h2 = pki.server_config().unwrap();
    assert!(offers_h2.alpn_protocols.contains(&b"h2".to_vec()));
    let exchange = ScriptedUpstream::echo(Some(offers_h2)).await.unwrap();
    let mut config = config_for(&exchange.url());
    config.exchange.trust_store = Some(pki.files().unwrap().ca.clone());
    change(&mut config);
    (exchange, start(config).await, dir)
}

/// The operation each request reached Exchange with, and the HTTP version it came in.
fn operations_and_versions(exchange: &ScriptedUpstream) -> Vec<(String, http::Version)> {
    exchange
        .requests()
        .iter()
        .map(|request| {
            let body = String::from_utf8_lossy(&request.body);
            let operation = ["GetStreamingEvents", "GetItem"]
                .into_iter()
                .find(|operation| body.contains(&format!("<m:{operation}")))
                .unwrap_or("other");
            (operation.to_owned(), request.version)
        })
        .collect()
}

const GET_STREAMING_EVENTS: &str = "<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>AAMk1</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>5</m:ConnectionTimeout></m:GetStreamingEvents>";

/// Against an Exchange that offers HTTP/2, long-lived requests share multiplexed HTTP/2
/// connections and short ones go over pooled HTTP/1.1, which costs the gateway less per request;
/// `exchange.pool.http2_short_requests` sends those over HTTP/2 as well.
#[tokio::test]
async fn long_lived_requests_take_http2_and_short_ones_http1() {
    for short_over_http2 in [false, true] {
        let (exchange, gateway, _dir) = http2_exchange_and_gateway(|config| {
            config.exchange.pool.http2_short_requests = short_over_http2;
        })
        .await;
        let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
        for operation in [GET_ITEM, GET_STREAMING_EVENTS, GET_ITEM] {
            let response = client().send(soap_request(&url, operation)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        let short = if short_over_http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(
            operations_and_versions(&exchange),
            [
                ("GetItem".to_owned(), short),
                ("GetStreamingEvents".to_owned(), http::Version::HTTP_2),
                ("GetItem".to_owned(), short),
            ],
            "http2_short_requests = {short_over_http2}"
        );
    }
}

/// Exchange on IIS 10 offers HTTP/2, which the gateway takes, but IIS does not support Windows
/// authentication over HTTP/2: a request that authenticates with `Negotiate` (the Kerberos ticket
/// of constrained delegation) must reach it over HTTP/1.1, even where other requests share
/// HTTP/2. (NTLM, which the gateway refuses by default, is told the same way: the host pool's
/// unit tests.)
#[tokio::test]
async fn windows_authentication_reaches_an_http2_exchange_over_http1() {
    let (exchange, gateway, _dir) = http2_exchange_and_gateway(|config| {
        config.exchange.pool.http2_short_requests = true;
    })
    .await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let authorizations = [
        "Basic YWxpY2VAdGVzdC5sb2NhbDpzZWNyZXQ=",
        "Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag",
        "Basic YWxpY2VAdGVzdC5sb2NhbDpzZWNyZXQ=",
        "negotiate YIIGhgYGKwYBBQUCoIIGejCCBnah",
    ];
    for authorization in authorizations {
        let mut request = soap_request(&url, GET_ITEM);
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static(authorization),
        );
        let response = client().send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{authorization}");
    }
    let seen: Vec<_> = exchange
        .requests()
        .iter()
        .map(|request| {
            let authorization = request.headers[http::header::AUTHORIZATION]
                .to_str()
                .unwrap();
            (authorization.to_owned(), request.version)
        })
        .collect();
    let expected: Vec<_> = authorizations
        .iter()
        .map(|authorization| {
            let version = if authorization.starts_with("Basic") {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            };
            (authorization.to_string(), version)
        })
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn ignore_ssl_errors_admits_any_exchange_certificate() {
    let untrusted = pki::self_signed(&["somewhere.else"]).unwrap();
    let exchange = ScriptedUpstream::echo(Some(untrusted.server_config().unwrap()))
        .await
        .unwrap();
    let mut config = config_for(&exchange.url());
    config.exchange.ignore_ssl_errors = true;
    let gateway = start(config).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let response = client().send(soap_request(&url, GET_ITEM)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn separate_ews_host_gets_ews_with_the_exchange_hosts_trust_settings() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let activesync_host = ScriptedUpstream::echo(Some(pki.server_config().unwrap()))
        .await
        .unwrap();
    let ews_host = ScriptedUpstream::echo(Some(pki.server_config().unwrap()))
        .await
        .unwrap();
    let mut config = config_for(&activesync_host.url());
    config.exchange.ews_url = Some(ews_host.url());
    // Set once, for the Exchange server; the EWS host must inherit it to be reachable at all.
    config.exchange.trust_store = Some(pki.files().unwrap().ca.clone());
    config.activesync.enable_proxy = true;
    let gateway = start(config).await;

    let ews = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    assert_eq!(
        client()
            .send(soap_request(&ews, GET_ITEM))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let eas = format!(
        "{}/Microsoft-Server-ActiveSync?Cmd=Ping&DeviceId=D1",
        http_base(&gateway)
    );
    let eas_request = Request::post(eas).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(
        client().send(eas_request).await.unwrap().status(),
        StatusCode::OK
    );

    let ews_paths: Vec<String> = ews_host.requests().into_iter().map(|r| r.path).collect();
    let eas_paths: Vec<String> = activesync_host
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(ews_paths, ["/EWS/Exchange.asmx"]);
    assert_eq!(
        eas_paths,
        ["/Microsoft-Server-ActiveSync?Cmd=Ping&DeviceId=D1"]
    );
}

#[tokio::test]
async fn non_soap_body_gets_400_when_soap_is_required() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let mut config = config_for(&exchange.url());
    config.ews.require_soap = true;
    let gateway = start(config).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let request = Request::post(url)
        .body(Full::new(Bytes::from_static(b"{\"not\":\"soap\"}")))
        .unwrap();
    let response = client().send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(text(response).await.contains("ErrorSchemaValidation"));
    assert!(exchange.requests().is_empty());
}

#[tokio::test]
async fn tls_listener_serves_ews_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let gateway = start(over_tls(config_for(&exchange.url()), &pki)).await;
    let url = format!(
        "https://localhost:{}/EWS/Exchange.asmx",
        gateway.https_addr().unwrap().port()
    );
    let response = HttpClient::trusting(pki.root_store())
        .send(soap_request(&url, GET_ITEM))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        exchange.requests().pop().unwrap().headers["x-forwarded-proto"],
        "https"
    );
}

#[tokio::test]
async fn shutdown_lets_the_in_flight_request_finish_and_refuses_new_connections() {
    let exchange = ScriptedUpstream::stalling().await.unwrap();
    let gateway = start(config_for(&exchange.url())).await;
    let addr = gateway.http_addr().unwrap();
    let url = format!("http://{addr}/EWS/Exchange.asmx");
    let in_flight = tokio::spawn({
        let request = soap_request(&url, GET_ITEM);
        async move { client().send(request).await.unwrap() }
    });
    exchange.wait_for_requests(1, STEP).await.unwrap();

    let shutdown = tokio::spawn(gateway.shutdown());
    seg_testbed::harness::wait_until(STEP, "the listener closes", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await
    .unwrap();
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the in-flight request"
    );

    exchange.release();
    let response = tokio::time::timeout(STEP, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    tokio::time::timeout(STEP, shutdown).await.unwrap().unwrap();
}

/// A Ping may wait at Exchange for an hour: a draining gateway closes its connection at once
/// (the device sends it again, to another node) instead of holding shutdown for the whole
/// grace period, while an ordinary request in flight is still let finish (test above).
#[tokio::test]
async fn shutdown_does_not_wait_for_pings_held_for_their_heartbeat() {
    let exchange = ScriptedUpstream::stalling().await.unwrap();
    let mut config = config_for(&exchange.url());
    config.activesync.enable_proxy = true;
    config.server.shutdown_grace = Duration::from_secs(3600);
    let gateway = start(config).await;
    let request = activesync_request(&gateway, "Ping", b"\x03\x01\x6a\x00\x00\x0d\x45\x01");
    let waiting = tokio::spawn(async move { client().send(request).await });
    exchange.wait_for_requests(1, STEP).await.unwrap();

    tokio::time::timeout(STEP, gateway.shutdown())
        .await
        .expect("shutdown within the step, not the hour of grace");
    let answer = tokio::time::timeout(STEP, waiting).await.unwrap().unwrap();
    assert!(answer.is_err(), "the Ping's connection closed: {answer:?}");
}

/// Reads until the peer closes the connection; true if it did so within `STEP`.
async fn closed_by_peer(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(STEP, read_to_end).await.is_ok()
}

#[tokio::test]
async fn slow_headers_are_cut_at_the_header_timeout() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let mut config = config_for(&exchange.url());
    config.server.header_timeout = Duration::from_millis(200);
    let gateway = start(config).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.http_addr().unwrap())
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    // A slowloris: a request line and one header, then nothing.
    stream
        .write_all(b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: seg\r\n")
        .await
        .unwrap();
    assert!(
        closed_by_peer(&mut stream).await,
        "the gateway must close a connection whose headers never end"
    );
    assert!(exchange.requests().is_empty());
}

#[tokio::test]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let mut config = config_for(&exchange.url());
    config.server.idle_timeout = Duration::from_millis(200);
    config.server.header_timeout = Duration::from_secs(30);
    let gateway = start(config).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.http_addr().unwrap())
        .await
        .unwrap();
    assert!(
        closed_by_peer(&mut stream).await,
        "an idle connection must be closed"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let mut config = config_for(&exchange.url());
    config.server.max_connections = 1;
    let gateway = start(config).await;
    let addr = gateway.http_addr().unwrap();
    let url = format!("http://{addr}/EWS/Exchange.asmx");

    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The kernel accepts the second connection into its backlog; the gateway must not serve it.
    let mut second = tokio::spawn({
        let request = soap_request(&url, GET_ITEM);
        async move { client().send(request).await.unwrap().status() }
    });
    // A negative within a window: nothing to wait for, so the window is the assertion.
    let not_served = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    assert!(
        not_served.is_err(),
        "the second connection was served while the first held the only slot"
    );
    assert!(exchange.requests().is_empty());

    drop(first);
    let status = tokio::time::timeout(STEP, second).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn ntlm_is_refused_with_401_and_never_forwarded() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let gateway = start(config_for(&exchange.url())).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    for authorization in [
        "NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==",
        "Negotiate TlRMTVNTUAABAAAAB4IIog==",
    ] {
        let mut request = soap_request(&url, GET_ITEM);
        request
            .headers_mut()
            .insert("authorization", authorization.parse().unwrap());
        let response = client().send(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization}"
        );
        assert_eq!(response.headers()["x-seg-fault"], "ntlm-not-supported");
    }
    assert!(exchange.requests().is_empty());
}

#[tokio::test]
async fn credentials_of_a_mode_not_enabled_are_refused_and_not_forwarded() {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let mut config = config_for(&exchange.url());
    config.auth.modes = vec![seg_proxy::config::AuthMode::Oauth];
    let gateway = start(config).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let with = |authorization: &str| {
        seg_testbed::harness::ews_request(&url, Some(authorization), &[], soap(GET_ITEM)).unwrap()
    };

    let basic = client().send(with("Basic YWxpY2U6cHc=")).await.unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(basic.headers()["x-seg-fault"], "basic-not-enabled");
    assert!(
        exchange.requests().is_empty(),
        "a refused password never reaches Exchange"
    );

    let bearer = client()
        .send(with("Bearer eyJ0eXAiOiJKV1QifQ.e30.sig"))
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    assert_eq!(exchange.requests().len(), 1);
}

/// One response read from a raw HTTP/1.1 connection: its head (lower case) and body.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut tokio::io::BufReader<R>,
) -> (String, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).await.unwrap();
        assert!(
            read > 0,
            "the connection closed before a response head: {head}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let mut body = Vec::new();
    if let Some(length) = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
    {
        body.resize(length.trim().parse().unwrap(), 0);
        reader.read_exact(&mut body).await.unwrap();
    } else {
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    (head, body)
}

#[tokio::test]
async fn a_parked_keep_alive_connection_serves_every_later_request() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let mut config = over_tls(config_for(&exchange.url()), &pki);
    // Parked as soon as it is quiet for a millisecond between requests.
    config.server.park_after = Duration::from_millis(1);
    let gateway = start(config).await;

    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(pki.root_store())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gateway.https_addr().unwrap())
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = tokio::io::BufReader::new(reader);
    let request = |n: usize| {
        let body =
            seg_testbed::harness::soap_envelope(&GET_ITEM.replace("AAMk1", &format!("AAMk{n}")));
        format!(
            "POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // The quiet time is what is under test here (the connection parks during it), not a wait
    // for something to happen.
    let quiet = || tokio::time::sleep(Duration::from_millis(20));
    let mut sent = 0;
    let mut answered = Vec::new();
    for round in 0..5 {
        // A request after a pause: the first byte wakes the parked connection.
        sent += 1;
        writer.write_all(request(sent).as_bytes()).await.unwrap();
        answered.push(read_response(&mut reader).await);
        quiet().await;
        // A head cut in two with a pause between: the part read before any parking must be
        // replayed to the next HTTP connection.
        sent += 1;
        let whole = request(sent);
        let (first, rest) = whole.split_at(20 + round);
        writer.write_all(first.as_bytes()).await.unwrap();
        writer.flush().await.unwrap();
        quiet().await;
        writer.write_all(rest.as_bytes()).await.unwrap();
        answered.push(read_response(&mut reader).await);
        quiet().await;
        // Two pipelined requests in one write.
        let pair = format!("{}{}", request(sent + 1), request(sent + 2));
        sent += 2;
        writer.write_all(pair.as_bytes()).await.unwrap();
        answered.push(read_response(&mut reader).await);
        answered.push(read_response(&mut reader).await);
        quiet().await;
    }
    assert_eq!(answered.len(), sent);
    for (n, (head, body)) in answered.iter().enumerate() {
        assert!(
            head.starts_with("http/1.1 200"),
            "request {}: {head}",
            n + 1
        );
        assert!(
            !head.contains("connection: close"),
            "request {}: {head}",
            n + 1
        );
        // Each answer is the echo of its own request, in order.
        let id = format!("AAMk{}\"", n + 1);
        assert!(
            String::from_utf8_lossy(body).contains(&id),
            "request {} got another request's answer",
            n + 1
        );
    }
    // Exchange saw each request whole: a byte lost or doubled at a park would show in the
    // request line or the body.
    let seen = exchange.requests();
    assert_eq!(seen.len(), sent);
    for (n, request) in seen.iter().enumerate() {
        assert_eq!(request.method, http::Method::POST, "request {}", n + 1);
        assert_eq!(request.path, "/EWS/Exchange.asmx", "request {}", n + 1);
        let expected = seg_testbed::harness::soap_envelope(
            &GET_ITEM.replace("AAMk1", &format!("AAMk{}", n + 1)),
        );
        assert_eq!(request.body, expected.as_bytes(), "request {}", n + 1);
    }
}
