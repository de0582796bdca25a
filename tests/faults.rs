//! Broken dependencies, over real sockets: the testbed's fault proxy sits between the gateway and
//! Exchange, the UEM console or the KDC, and breaks the connection the way a failing peer
//! would (refused, down, stalled, reset, truncated, garbage). The gateway must answer with a
//! defined fault in bounded time, keep the last good compliance view, never forward a request
//! it could not authenticate, and recover without a restart once the dependency is back.
//!
//! The table of what is tried and what was observed is in `docs/reliability.md`.

mod support;

use http::StatusCode;
use http_body_util::BodyExt as _;
use seg_proxy::Gateway;
use seg_testbed::fault_proxy::{Direction, Fault, FaultHandle, FaultProxy};
use seg_testbed::harness::{self, TestExchange, reserve_port, wait_until, xml_text};
use seg_testbed::uem::{self, Change, Device, Mode, UemConfig, UemHandle, UemServer};
use seg_testbed::upstream::ScriptedUpstream;
use std::time::{Duration, Instant};
use support::*;

const ALICE: &str = "alice@test.local";
const GET_FOLDER: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
const STREAMING_SUBSCRIBE: &str = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;

// ---------------------------------------------------------------------------------------------
// Exchange

/// The gateway's timeout for Exchange's response headers in these tests.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(500);

/// The test Exchange (TLS) behind a fault proxy, and a gateway (plain HTTP listener, no
/// compliance) whose Exchange is the proxy.
struct ExchangeStand {
    exchange: TestExchange,
    proxy: FaultProxy,
    faults: FaultHandle,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

impl ExchangeStand {
    async fn start() -> ExchangeStand {
        let dir = tempfile::tempdir().unwrap();
        let exchange = TestExchange::start(|_| {}).await.unwrap();
        let proxy = FaultProxy::start(exchange.server.addr()).await.unwrap();
        let ca = dir.path().join("exchange-ca.pem");
        std::fs::write(&ca, exchange.pki.ca_pem()).unwrap();
        // The test certificate names 127.0.0.1, which the proxy's address also is.
        let mut config = config_for(&format!("https://{}", proxy.addr()));
        config.exchange.trust_store = Some(ca);
        config.exchange.timeout = EXCHANGE_TIMEOUT;
        let gateway = start(config).await;
        let faults = proxy.handle();
        ExchangeStand {
            exchange,
            proxy,
            faults,
            gateway,
            _dir: dir,
        }
    }

    fn ews_url(&self) -> String {
        format!("{}/EWS/Exchange.asmx", http_base(&self.gateway))
    }

    /// Sends `body` (a whole request body) through the gateway as alice.
    async fn post(&self, body: String) -> http::Response<hyper::body::Incoming> {
        let alice = self.exchange.basic(ALICE);
        let request = harness::ews_request(&self.ews_url(), Some(&alice), &[], body).unwrap();
        send(&self.exchange.client, request).await
    }

    async fn ews(&self, operation: &str) -> http::Response<hyper::body::Incoming> {
        self.post(soap(operation)).await
    }
}

/// Asserts a gateway fault: `status`, `X-Seg-Fault: reason`, a SOAP body with `code`.
async fn assert_gateway_fault(
    response: http::Response<hyper::body::Incoming>,
    status: StatusCode,
    reason: &str,
    code: &str,
) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["x-seg-fault"], reason);
    assert_eq!(
        response.headers()["content-type"],
        "text/xml; charset=utf-8"
    );
    let body = text(response).await;
    assert_eq!(
        xml_text(&body, "ResponseCode").as_deref(),
        Some(code),
        "{body}"
    );
}

#[tokio::test]
async fn exchange_changing_to_an_untrusted_certificate_is_refused_and_a_renewed_one_served() {
    let mut stand = ExchangeStand::start().await;
    assert_eq!(stand.ews(GET_FOLDER).await.status(), StatusCode::OK);

    // Exchange comes back on the same address with a certificate of another CA (names right,
    // issuer unknown to the gateway's trust store): every new connection must be refused, and
    // the pooled one from before the change is gone with the old server.
    let impostor = seg_testbed::pki::self_signed(&seg_testbed::pki::DEFAULT_SERVER_NAMES).unwrap();
    stand.exchange = stand
        .exchange
        .restart_with_certificate(impostor.server_config().unwrap(), |_| {})
        .await
        .unwrap();
    stand.faults.cut_connections();
    let accepted = stand.faults.accepted();
    assert_gateway_fault(
        stand.ews(GET_FOLDER).await,
        StatusCode::BAD_GATEWAY,
        "upstream-tls",
        "ErrorConnectionFailed",
    )
    .await;
    assert!(
        stand.faults.accepted() > accepted,
        "a new connection was tried"
    );

    // A renewed certificate from the trusted CA: served again, without a restart.
    stand.exchange = stand
        .exchange
        .restart_with_new_certificate(|_| {})
        .await
        .unwrap();
    assert_eq!(stand.ews(GET_FOLDER).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn exchange_down_gives_a_502_soap_fault_and_recovers_without_restart() {
    let stand = ExchangeStand::start().await;
    assert_eq!(stand.ews(GET_FOLDER).await.status(), StatusCode::OK);

    stand.faults.down();
    wait_until(STEP, "the proxy's listener to close", || async {
        tokio::net::TcpStream::connect(stand.proxy.addr())
            .await
            .is_err()
    })
    .await
    .unwrap();
    assert_gateway_fault(
        stand.ews(GET_FOLDER).await,
        StatusCode::BAD_GATEWAY,
        "upstream-unreachable",
        "ErrorConnectionFailed",
    )
    .await;

    stand.faults.restore();
    wait_until(STEP, "Exchange to be served again", || async {
        stand.ews(GET_FOLDER).await.status() == StatusCode::OK
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn exchange_refusing_connections_gives_a_502_soap_fault() {
    let stand = ExchangeStand::start().await;
    stand.faults.refuse();
    let before = stand.exchange.server.requests().len();

    let response = stand.ews(GET_FOLDER).await;

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["x-seg-fault"], "upstream-unreachable");
    assert!(text(response).await.contains("<faultcode"));
    assert!(stand.faults.accepted() >= 1, "the gateway did try");
    assert_eq!(stand.exchange.server.requests().len(), before);
}

#[tokio::test]
async fn exchange_stalling_before_headers_gives_a_504_within_the_timeout() {
    // Plain HTTP, so that "no byte of the answer" is no byte at all, whichever connection of
    // the gateway's pool the request takes.
    let (exchange, proxy, gateway) = plain_exchange_stand().await;
    let faults = proxy.handle();
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    faults.set(Direction::ServerToClient, Fault::StallAfter(0));

    let started = Instant::now();
    let response = send(&client, soap_request(&url, GET_FOLDER)).await;
    let took = started.elapsed();

    assert_gateway_fault(
        response,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream-timeout",
        "ErrorTimeoutExpired",
    )
    .await;
    assert!(
        took >= EXCHANGE_TIMEOUT,
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < EXCHANGE_TIMEOUT * 4,
        "answered long after the timeout: {took:?}"
    );
    assert_eq!(
        exchange.requests().len(),
        1,
        "the request did reach Exchange"
    );

    faults.restore();
    let response = send(&client, soap_request(&url, GET_FOLDER)).await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// A plain-HTTP echo Exchange behind a fault proxy and a gateway in front of it: for faults
/// that must hit the HTTP bytes themselves rather than TLS records.
async fn plain_exchange_stand() -> (ScriptedUpstream, FaultProxy, Gateway) {
    let exchange = ScriptedUpstream::echo(None).await.unwrap();
    let proxy = FaultProxy::start(exchange.addr()).await.unwrap();
    let mut config = config_for(&format!("http://{}", proxy.addr()));
    config.exchange.timeout = EXCHANGE_TIMEOUT;
    let gateway = start(config).await;
    (exchange, proxy, gateway)
}

#[tokio::test]
async fn exchange_reset_before_the_response_head_gives_a_502() {
    let (exchange, proxy, gateway) = plain_exchange_stand().await;
    let faults = proxy.handle();
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    faults.set(Direction::ServerToClient, Fault::ResetAfter(0));

    let response = send(&client, soap_request(&url, GET_FOLDER)).await;

    assert_gateway_fault(
        response,
        StatusCode::BAD_GATEWAY,
        "upstream-error",
        "ErrorConnectionFailed",
    )
    .await;
    assert_eq!(
        exchange.requests().len(),
        1,
        "the request had reached Exchange"
    );
    faults.restore();
    let response = send(&client, soap_request(&url, GET_FOLDER)).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn exchange_response_cut_short_is_never_a_clean_short_body() {
    let (_exchange, proxy, gateway) = plain_exchange_stand().await;
    let faults = proxy.handle();
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    // The echo answers with the request's 64 KiB body; the connection closes cleanly after
    // its head and the first few hundred bytes.
    let big = format!("<m:CreateItem>{}</m:CreateItem>", "x".repeat(64 * 1024));
    faults.set(Direction::ServerToClient, Fault::TruncateAfter(1024));

    let response = send(&client, soap_request(&url, &big)).await;

    assert_eq!(response.status(), StatusCode::OK, "the head had passed");
    let body = harness::within(STEP, "the body", response.into_body().collect()).await;
    assert!(
        matches!(body, Ok(Err(_))),
        "the client must see the body fail, not end short: {:?}",
        body.map(|body| body.map(|body| body.to_bytes().len()))
    );
    faults.restore();
    let response = send(&client, soap_request(&url, GET_FOLDER)).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn exchange_answering_garbage_gives_a_502() {
    let stand = ExchangeStand::start().await;
    // Garbage from the first byte: the TLS handshake itself fails.
    stand
        .faults
        .set(Direction::ServerToClient, Fault::GarbageAfter(0));

    let response = stand.ews(GET_FOLDER).await;

    assert_gateway_fault(
        response,
        StatusCode::BAD_GATEWAY,
        "upstream-tls",
        "ErrorConnectionFailed",
    )
    .await;
    stand.faults.restore();
    wait_until(STEP, "Exchange to be served again", || async {
        stand.ews(GET_FOLDER).await.status() == StatusCode::OK
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn exchange_reset_mid_stream_ends_the_clients_stream_and_the_next_request_is_served() {
    let stand = ExchangeStand::start().await;
    let subscribed = text(stand.ews(STREAMING_SUBSCRIBE).await).await;
    let subscription = xml_text(&subscribed, "SubscriptionId").expect(&subscribed);
    let response = stand
        .ews(&format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{subscription}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents>"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body();
    stand
        .exchange
        .server
        .deliver(ALICE, "before the reset")
        .unwrap();
    assert!(
        next_chunk(&mut stream).await.is_some(),
        "the stream delivers"
    );

    // The next bytes Exchange sends on any connection reset it.
    stand
        .faults
        .set(Direction::ServerToClient, Fault::ResetAfter(0));
    stand.exchange.server.deliver(ALICE, "never seen").unwrap();

    let ended = harness::within(STEP, "the client's stream to end", async {
        loop {
            match stream.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) => return "error",
                None => return "end",
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the client's stream did not end: {ended:?}");

    stand.faults.restore();
    assert_eq!(stand.ews(GET_FOLDER).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn exchange_500_soap_fault_is_passed_through_unchanged() {
    let stand = ExchangeStand::start().await;
    // A body Exchange cannot read: it answers 500 with its own SOAP fault.
    let unreadable = soap("<m:NoSuchOperation/>");
    let alice = stand.exchange.basic(ALICE);
    let direct = send(
        &stand.exchange.client,
        harness::ews_request(
            &stand.exchange.server.url(),
            Some(&alice),
            &[],
            unreadable.clone(),
        )
        .unwrap(),
    )
    .await;
    assert_eq!(direct.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let direct_type = direct.headers()["content-type"].clone();
    let direct_body = text(direct).await;

    let through = stand.post(unreadable).await;

    assert_eq!(through.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(through.headers().get("x-seg-fault").is_none());
    assert_eq!(through.headers()["content-type"], direct_type);
    assert_eq!(
        text(through).await,
        direct_body,
        "Exchange's own fault, byte for byte"
    );
}

/// A server that answers every request with `response` (a whole HTTP/1.1 response), after
/// reading its head and its `Content-Length` body; the number of requests it answered.
async fn canned_upstream(
    response: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let listener = harness::local_listener().await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut stream = tokio::io::BufReader::new(stream);
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if stream
                        .get_mut()
                        .write_all(response.as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (addr, answered)
}

#[tokio::test]
async fn exchange_503_is_passed_through_unchanged() {
    // What IIS answers when the EWS application pool is stopped.
    const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html; charset=us-ascii\r\nRetry-After: 30\r\nContent-Length: 38\r\n\r\n<h2>Service Unavailable</h2><hr>HTTP 5";
    let (upstream, answered) = canned_upstream(UNAVAILABLE).await;
    let gateway = start(config_for(&format!("http://{upstream}"))).await;
    let url = format!("{}/EWS/Exchange.asmx", http_base(&gateway));
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();

    let response = send(&client, soap_request(&url, GET_FOLDER)).await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("x-seg-fault").is_none());
    assert_eq!(response.headers()["retry-after"], "30");
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=us-ascii"
    );
    assert_eq!(
        text(response).await,
        "<h2>Service Unavailable</h2><hr>HTTP 5"
    );
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// UEM

const KEPT: &str = "EASKEPT";
const WIPED: &str = "EASWIPED";

/// The UEM console (no webhook: the view changes only by syncs) behind a fault proxy, the test
/// Exchange, and a gateway with compliance from UEM through the proxy. At start the view holds
/// a compliant device and one wiped in the console, so blocked.
struct UemStand {
    exchange: TestExchange,
    uem: UemHandle,
    proxy: FaultProxy,
    faults: FaultHandle,
    gateway: Gateway,
    _ens: uem::WebhookReceiver,
    _dir: tempfile::TempDir,
}

/// The gateway's timeout for one UEM page in these tests.
const UEM_TIMEOUT: Duration = Duration::from_millis(500);

impl UemStand {
    async fn start() -> UemStand {
        let dir = tempfile::tempdir().unwrap();
        let exchange = TestExchange::start(|_| {}).await.unwrap();
        let ens = uem::WebhookReceiver::start().await.unwrap();
        let uem = UemServer::spawn(
            harness::local_listener().await.unwrap(),
            None,
            UemConfig::new(vec![
                Device::new(KEPT, 1, ALICE),
                Device::new(WIPED, 2, ALICE),
            ]),
        )
        .unwrap();
        uem.update(WIPED, Change::EnterpriseWipe).unwrap();
        let proxy = FaultProxy::start(uem.addr()).await.unwrap();
        let mut config = gateway_config(
            &exchange,
            &uem,
            &format!("{}/gateway/compliance", ens.url()),
            reserve_port().unwrap(),
            dir.path().join("view.snapshot"),
            dir.path(),
        );
        let compliance = config.compliance.as_mut().unwrap();
        compliance.uem_url = format!("http://{}", proxy.addr());
        compliance.uem_timeout = UEM_TIMEOUT;
        compliance.webhook_secret = None;
        let gateway = start(config).await;
        wait_ready(&gateway).await;
        let faults = proxy.handle();
        let stand = UemStand {
            exchange,
            uem,
            proxy,
            faults,
            gateway,
            _ens: ens,
            _dir: dir,
        };
        stand.assert_last_good_view().await;
        stand
    }

    /// The status of an EWS request of alice's on `device` through the gateway.
    async fn ews_status(&self, device: &str) -> StatusCode {
        let alice = self.exchange.basic(ALICE);
        let request = harness::ews_request(
            &format!("{}/EWS/Exchange.asmx", http_base(&self.gateway)),
            Some(&alice),
            &[("X-Device-Id", device)],
            soap(GET_FOLDER),
        )
        .unwrap();
        send(&self.exchange.client, request).await.status()
    }

    /// The compliant device is served, the wiped one refused.
    async fn assert_last_good_view(&self) {
        assert_eq!(self.ews_status(KEPT).await, StatusCode::OK);
        assert_eq!(self.ews_status(WIPED).await, StatusCode::FORBIDDEN);
    }

    /// Asks for a full sync through the admin API and waits for it to be recorded; its status as
    /// the admin API's `GET /sync` reports it.
    async fn sync(&self) -> serde_json::Value {
        let before = self.sync_status().await;
        let attempts = |status: &serde_json::Value| {
            status["successes"].as_u64().unwrap() + status["failures"].as_u64().unwrap()
        };
        let (status, _) = admin_request(
            &self.gateway,
            http::Method::POST,
            "/sync",
            Some(ADMIN_TOKEN),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let latest = std::sync::Arc::new(std::sync::Mutex::new(before.clone()));
        wait_until(STEP, "the sync to be recorded", || {
            let floor = attempts(&before);
            let latest = latest.clone();
            async move {
                let now = self.sync_status().await;
                let done = attempts(&now) > floor;
                *latest.lock().unwrap() = now;
                done
            }
        })
        .await
        .unwrap();
        latest.lock().unwrap().clone()
    }

    async fn sync_status(&self) -> serde_json::Value {
        let (status, body) = admin_request(
            &self.gateway,
            http::Method::GET,
            "/sync",
            Some(ADMIN_TOKEN),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Cuts the connections the gateway keeps to UEM and waits for a sync to succeed on a new
    /// one, then measures one more full sync on that connection: the size of its answer, and
    /// the bytes the connection has carried towards the gateway after it. (Bytes are counted
    /// per connection, so a fault "after N bytes" aimed at the next answer on this connection
    /// uses both; were the next sync to open another connection, the fault would come too late
    /// and the sync would succeed, failing the test rather than passing it wrongly.)
    async fn measure_answer(&self) -> (u64, u64) {
        let start = self.faults.forwarded(Direction::ServerToClient);
        self.faults.cut_connections();
        wait_until(STEP, "a sync to succeed", || async {
            self.sync().await["last_error"].is_null()
        })
        .await
        .unwrap();
        let before = self.faults.forwarded(Direction::ServerToClient);
        let status = self.sync().await;
        assert!(status["last_error"].is_null(), "{status}");
        let after = self.faults.forwarded(Direction::ServerToClient);
        (after - before, after - start)
    }

    /// With `fault` in force: a full sync fails with an error containing `error`, is counted as
    /// a failure, the view is unchanged (even though the console wiped the kept device), the
    /// gateway stays ready; and after the fault, the next sync applies the console's view.
    async fn assert_failed_sync_keeps_the_view(self, error: &str) {
        // What the console says now must not reach the view while the sync fails.
        self.uem.update(KEPT, Change::EnterpriseWipe).unwrap();
        let failures_before = admin_metric(
            &self.gateway,
            r#"seg_compliance_sync_total{kind="full",outcome="failure"}"#,
        )
        .await
        .unwrap();

        let status = self.sync().await;

        let last_error = status["last_error"].as_str().unwrap_or_default();
        assert!(last_error.contains(error), "{status}");
        assert_eq!(status["devices"], 2, "{status}");
        assert_eq!(status["loaded"], true, "{status}");
        let failures = admin_metric(
            &self.gateway,
            r#"seg_compliance_sync_total{kind="full",outcome="failure"}"#,
        )
        .await
        .unwrap();
        assert!(failures > failures_before);
        let (ready, _) = admin_request(&self.gateway, http::Method::GET, "/readyz", None, "").await;
        assert_eq!(ready, StatusCode::OK, "the last good view still serves");
        self.assert_last_good_view().await;

        // Recovery: the next sync after the fault applies the console's wipe.
        self.faults.restore();
        wait_until(STEP, "a sync to succeed again", || async {
            self.sync().await["last_error"].is_null()
        })
        .await
        .unwrap();
        assert_eq!(self.ews_status(KEPT).await, StatusCode::FORBIDDEN);
        drop(self.proxy);
    }
}

#[tokio::test]
async fn uem_down_keeps_the_last_good_view() {
    let stand = UemStand::start().await;
    stand.faults.down();
    stand
        .assert_failed_sync_keeps_the_view("device source unreachable: client error (Connect)")
        .await;
}

#[tokio::test]
async fn uem_refusing_connections_keeps_the_last_good_view() {
    let stand = UemStand::start().await;
    stand.faults.refuse();
    stand.faults.cut_connections();
    stand
        .assert_failed_sync_keeps_the_view("device source unreachable")
        .await;
}

#[tokio::test]
async fn uem_slower_than_the_timeout_keeps_the_last_good_view() {
    let stand = UemStand::start().await;
    stand
        .faults
        .set(Direction::ServerToClient, Fault::Delay(UEM_TIMEOUT * 4));
    let started = Instant::now();
    stand
        .assert_failed_sync_keeps_the_view("device source unreachable: no answer within 500ms")
        .await;
    // The failed sync is bounded by the timeout, not by the console's slowness; the whole
    // test (start to recovery) would take far longer if it waited for each slow answer.
    assert!(started.elapsed() < STEP);
}

#[tokio::test]
async fn uem_stalling_keeps_the_last_good_view() {
    let stand = UemStand::start().await;
    stand
        .faults
        .set(Direction::ServerToClient, Fault::StallAfter(0));
    stand
        .assert_failed_sync_keeps_the_view("device source unreachable: no answer within 500ms")
        .await;
}

#[tokio::test]
async fn uem_answering_garbage_keeps_the_last_good_view() {
    let stand = UemStand::start().await;
    stand
        .faults
        .set(Direction::ServerToClient, Fault::GarbageAfter(0));
    // Not an HTTP response at all: as if nothing answered.
    stand
        .assert_failed_sync_keeps_the_view("device source unreachable")
        .await;
}

#[tokio::test]
async fn uem_page_with_a_garbled_end_keeps_the_last_good_view() {
    let stand = UemStand::start().await;
    let (size, carried) = stand.measure_answer().await;
    // The head and most of the next page arrive; its last 16 bytes are garbage.
    stand.faults.set(
        Direction::ServerToClient,
        Fault::GarbageAfter(carried + size - 16),
    );
    stand
        .assert_failed_sync_keeps_the_view("device source answered garbage: page 0")
        .await;
}

#[tokio::test]
async fn uem_page_cut_short_keeps_the_last_good_view() {
    let stand = UemStand::start().await;
    let (size, carried) = stand.measure_answer().await;
    // The head and most of the next page arrive, then the connection closes cleanly.
    stand.faults.set(
        Direction::ServerToClient,
        Fault::TruncateAfter(carried + size - 40),
    );
    stand
        .assert_failed_sync_keeps_the_view("device source unreachable")
        .await;
}

#[tokio::test]
async fn uem_answering_an_empty_list_keeps_the_last_good_view() {
    let stand = UemStand::start().await;
    stand.uem.set_mode(Mode::EmptyList);
    let status = stand.sync().await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("empty device list"),
        "{status}"
    );
    assert_eq!(status["devices"], 2);
    stand.assert_last_good_view().await;
}

// ---------------------------------------------------------------------------------------------
// KDC

/// The gateway's timeout for obtaining a ticket in these tests.
const KCD_TIMEOUT: Duration = Duration::from_secs(2);

/// The real MIT KDC behind a fault proxy, Exchange accepting Negotiate with its keytab, and a
/// gateway with `cba-kcd` whose `krb5.conf` names the proxy as the realm's KDC. The gateway's
/// Kerberos client tries UDP first: nothing listens for UDP on the proxy's port, so the kernel
/// refuses it at once and every exchange with the KDC goes over TCP, through the proxy.
struct KdcStand {
    kdc: seg_testbed::kdc::RunningKdc,
    exchange: TestExchange,
    faults: FaultHandle,
    _proxy: FaultProxy,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

impl KdcStand {
    async fn start() -> KdcStand {
        KdcStand::start_with(|_| {}).await
    }

    /// [`KdcStand::start`] with `configure` applied to `[auth.kcd]` before the gateway starts.
    async fn start_with(configure: impl FnOnce(&mut seg_proxy::config::Kcd)) -> KdcStand {
        use seg_testbed::kdc::{EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig};
        let dir = tempfile::tempdir().unwrap();
        let kdc = tokio::task::spawn_blocking(|| Kdc::start(KdcConfig::temporary()))
            .await
            .unwrap()
            .expect("the test KDC starts");
        let proxy = FaultProxy::start(kdc.addr()).await.unwrap();
        let krb5_conf = dir.path().join("krb5.conf");
        let original = std::fs::read_to_string(kdc.krb5_conf()).unwrap();
        let through_proxy = original.replace(
            &format!("kdc = {}", kdc.addr()),
            &format!("kdc = {}", proxy.addr()),
        );
        assert_ne!(original, through_proxy, "the KDC line of {original}");
        std::fs::write(&krb5_conf, through_proxy).unwrap();
        let exchange_keytab = kdc.keytab(EXCHANGE_SERVICE).unwrap().to_path_buf();
        let exchange = TestExchange::start(|config| {
            config.negotiate = Some(seg_testbed::exchange::NegotiateConfig::new(exchange_keytab));
        })
        .await
        .unwrap();
        let mut config = config_for(&exchange.server.base_url());
        let ca = dir.path().join("exchange-ca.pem");
        std::fs::write(&ca, exchange.pki.ca_pem()).unwrap();
        config.exchange.trust_store = Some(ca);
        config.ews.remove_unsupported_auth = true;
        with_client_certificates(&mut config, &exchange, dir.path());
        config.auth.modes = vec![
            seg_proxy::config::AuthMode::Basic,
            seg_proxy::config::AuthMode::CbaKcd,
        ];
        let mut kcd = seg_proxy::config::Kcd::new(
            krb5_conf,
            kdc.keytab(GATEWAY_SERVICE).unwrap(),
            GATEWAY_SERVICE,
        );
        kcd.target_spn = Some(EXCHANGE_SERVICE.into());
        kcd.timeout = KCD_TIMEOUT;
        configure(&mut kcd);
        config.auth.kcd = Some(kcd);
        let gateway = start(config).await;
        KdcStand {
            kdc,
            exchange,
            faults: proxy.handle(),
            _proxy: proxy,
            gateway,
            _dir: dir,
        }
    }

    /// A GetFolder without credentials over the TLS listener, with a certificate naming
    /// `alice@TEST.LOCAL`.
    async fn get_folder(&self) -> http::Response<hyper::body::Incoming> {
        self.get_folder_as("alice@TEST.LOCAL").await
    }

    /// The same with a certificate naming `upn`.
    async fn get_folder_as(&self, upn: &str) -> http::Response<hyper::body::Incoming> {
        let cert = self
            .exchange
            .pki
            .issue_client_cert(&seg_testbed::pki::ClientCertSpec::upn(upn))
            .unwrap();
        let client = seg_testbed::client::HttpClient::with_config(
            cert.client_config(self.exchange.pki.root_store()).unwrap(),
        );
        send(
            &client,
            soap_request(&https_ews_url(&self.gateway), GET_FOLDER),
        )
        .await
    }

    /// Asserts a `503` KCD fault with one of `reasons`, answered within the KCD timeout (and a
    /// margin), and that nothing reached Exchange.
    async fn assert_kcd_fault(&self, reasons: &[&str]) {
        let started = Instant::now();
        let response = self.get_folder().await;
        let took = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let reason = response.headers()["x-seg-fault"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(reasons.contains(&reason.as_str()), "{reason}");
        assert!(text(response).await.contains("<faultcode"));
        assert!(took < KCD_TIMEOUT + Duration::from_secs(2), "took {took:?}");
        assert!(
            self.exchange.server.requests().is_empty(),
            "a request the gateway could not authenticate reached Exchange"
        );
    }

    /// Back to normal: the next request reaches Exchange as alice, by Kerberos.
    async fn assert_recovers(self) {
        self.faults.restore();
        let response = self.get_folder().await;
        assert_eq!(response.status(), StatusCode::OK);
        let users: Vec<Option<String>> = self
            .exchange
            .server
            .requests()
            .into_iter()
            .map(|request| request.authenticated_user)
            .collect();
        assert_eq!(users, [Some(ALICE.to_owned())]);
        assert!(
            self.faults.accepted() > 0,
            "the KDC was reached through the proxy"
        );
        self.gateway.shutdown().await;
        let kdc = self.kdc;
        tokio::task::spawn_blocking(move || drop(kdc))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdc_down_is_a_503_never_an_unauthenticated_forward_and_recovers_without_restart() {
    let stand = KdcStand::start().await;
    stand.faults.down();
    stand.assert_kcd_fault(&["kcd-unavailable"]).await;
    stand.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdc_answering_garbage_is_a_503_and_recovers_without_restart() {
    let stand = KdcStand::start().await;
    // The first four bytes of a KDC's TCP answer are its length: garbage there announces a
    // reply far over the client's limit, which it refuses at once.
    stand
        .faults
        .set(Direction::ServerToClient, Fault::GarbageAfter(0));
    stand.assert_kcd_fault(&["kcd-unavailable"]).await;
    stand.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdc_stalling_is_a_503_within_the_timeout_and_recovers_without_restart() {
    let stand = KdcStand::start().await;
    stand
        .faults
        .set(Direction::ServerToClient, Fault::StallAfter(0));
    stand.assert_kcd_fault(&["kcd-timeout"]).await;
    stand.assert_recovers().await;
}

/// Asserts a `503` KCD fault (`X-Seg-Fault: reason`, EWS response code `code`) for a request
/// with a certificate naming `upn`, and that nothing reached Exchange.
async fn assert_kdc_refusal(stand: &KdcStand, upn: &str, reason: &str, code: &str) {
    let response = stand.get_folder_as(upn).await;
    assert_gateway_fault(response, StatusCode::SERVICE_UNAVAILABLE, reason, code).await;
    assert!(
        stand.exchange.server.requests().is_empty(),
        "a request the gateway could not authenticate reached Exchange"
    );
    assert!(
        stand.faults.accepted() > 0,
        "the KDC was asked, through the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdc_not_knowing_the_user_is_a_503_naming_why_and_other_users_are_served() {
    let stand = KdcStand::start().await;
    // The real KDC answers S4U2Self for a user it does not have with KRB-ERROR
    // KDC_ERR_C_PRINCIPAL_UNKNOWN.
    assert_kdc_refusal(
        &stand,
        "mallory@TEST.LOCAL",
        "kcd-unknown-user",
        "ErrorAccessDenied",
    )
    .await;
    stand.assert_recovers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdc_refusing_the_delegation_is_a_503_naming_why_never_a_forward() {
    // A target the gateway may not delegate to: the real KDC answers S4U2Proxy with KRB-ERROR
    // KDC_ERR_BADOPTION.
    let stand = KdcStand::start_with(|kcd| {
        kcd.target_spn = Some(seg_testbed::kdc::OTHER_SERVICE.into());
    })
    .await;
    assert_kdc_refusal(
        &stand,
        "alice@TEST.LOCAL",
        "kcd-delegation-refused",
        "ErrorAccessDenied",
    )
    .await;
    stand.gateway.shutdown().await;
    let kdc = stand.kdc;
    tokio::task::spawn_blocking(move || drop(kdc))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The gateway's own files

/// A tmpfs of `size` mounted on a directory of its own, unmounted when dropped: a disk that
/// fills up for real. `None` (the test is skipped, and says so) where mounting is not allowed.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills what is left of the disk with one file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The status of an EWS request of alice's on `device` through `gateway`.
async fn device_status(gateway: &Gateway, exchange: &TestExchange, device: &str) -> StatusCode {
    let request = harness::ews_request(
        &format!("{}/EWS/Exchange.asmx", http_base(gateway)),
        Some(&exchange.basic(ALICE)),
        &[("X-Device-Id", device)],
        soap(GET_FOLDER),
    )
    .unwrap();
    send(&exchange.client, request).await.status()
}

/// The snapshot at `path`: it must read back whole (never a half-written file).
fn saved_view(path: &std::path::Path) -> compliance_policy::snapshot::Saved {
    compliance_policy::snapshot::Snapshot::new(path)
        .load()
        .expect("the snapshot on disk reads back whole")
        .expect("a snapshot on disk")
}

/// Whether `device` has an override in `saved`.
fn has_override(saved: &compliance_policy::snapshot::Saved, device: &str) -> bool {
    serde_json::to_string(&saved.overrides)
        .unwrap()
        .to_ascii_lowercase()
        .contains(&device.to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_snapshot_and_audit_keeps_serving_counts_the_loss_and_recovers() {
    let Some(disk) = SmallDisk::mount("512k") else {
        return;
    };
    const TOGGLED: &str = "EASDEV3";
    let (snapshot, audit) = (
        disk.path().join("view.snapshot"),
        disk.path().join("audit.redb"),
    );
    let stand = ComplianceStand::start(
        vec![
            Device::new(KEPT, 1, ALICE),
            Device::new(WIPED, 2, ALICE),
            Device::new(TOGGLED, 3, ALICE),
        ],
        |config, _| {
            config.compliance.as_mut().unwrap().snapshot = Some(snapshot.clone());
            with_audit(config, audit.clone(), "seg-disk-test");
        },
    )
    .await;
    let gateway = &stand.gateway;
    stand.uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    wait_until(STEP, "the wipe to be applied and saved", || async {
        device_status(gateway, &stand.exchange, WIPED).await == StatusCode::FORBIDDEN
            && snapshot.exists()
    })
    .await
    .unwrap();
    let lost = r#"seg_audit_entries_lost_total{cause="write-failed"}"#;
    let written = "seg_audit_entries_written_total";

    // The disk fills up. Each change now writes audit entries and a snapshot, and fails.
    let filler = disk.fill();
    let mut block = true;
    wait_until(STEP, "an audit write to fail", || {
        let action = block.then_some("block");
        block = !block;
        async move {
            assert!(
                admin_device_override(gateway, TOGGLED, action)
                    .await
                    .is_success()
            );
            admin_metric(gateway, lost).await.unwrap_or(0.0) > 0.0
        }
    })
    .await
    .unwrap();

    // Traffic goes on from memory, decided as before; the snapshot on disk is a whole one.
    assert_eq!(
        device_status(gateway, &stand.exchange, KEPT).await,
        StatusCode::OK
    );
    assert_eq!(
        device_status(gateway, &stand.exchange, WIPED).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin_request(gateway, http::Method::GET, "/readyz", None, "")
            .await
            .0,
        StatusCode::OK
    );
    saved_view(&snapshot);

    // Space again: the next change is written to both.
    std::fs::remove_file(&filler).unwrap();
    let written_before = admin_metric(gateway, written).await.unwrap();
    assert!(
        admin_device_override(gateway, TOGGLED, Some("block"))
            .await
            .is_success()
    );
    wait_until(STEP, "the audit trail to write again", || async {
        admin_metric(gateway, written).await.unwrap_or(0.0) > written_before
    })
    .await
    .unwrap();
    wait_until(STEP, "the snapshot to be saved again", || async {
        has_override(&saved_view(&snapshot), TOGGLED)
    })
    .await
    .unwrap();
    assert_eq!(
        device_status(gateway, &stand.exchange, TOGGLED).await,
        StatusCode::FORBIDDEN
    );
    stand.gateway.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Redis

/// What the load of [`redis_killed_under_load_decides_from_the_last_view_and_reconciles`]
/// saw: requests answered as expected, and every other outcome, described.
#[derive(Default)]
struct Load {
    answered: std::sync::atomic::AtomicUsize,
    wrong: std::sync::Mutex<Vec<String>>,
}

/// Sends alice's `GetFolder`s through `gateway` (`http://…`), alternating between the kept
/// device (expecting `200`) and the wiped one (`403`), until `stop`; records them in `load`.
async fn generate_load(
    base: String,
    exchange: std::sync::Arc<TestExchange>,
    load: std::sync::Arc<Load>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    for round in 0usize.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (device, expected) = if round % 2 == 0 {
            (KEPT, StatusCode::OK)
        } else {
            (WIPED, StatusCode::FORBIDDEN)
        };
        let request = harness::ews_request(
            &format!("{base}/EWS/Exchange.asmx"),
            Some(&exchange.basic(ALICE)),
            &[("X-Device-Id", device)],
            soap(GET_FOLDER),
        )
        .unwrap();
        match harness::within(STEP, "an answer", exchange.client.send(request)).await {
            Ok(Ok(response)) if response.status() == expected => {
                load.answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(response)) => load.wrong.lock().unwrap().push(format!(
                "{device}: {} instead of {expected}",
                response.status()
            )),
            Ok(Err(error)) => load
                .wrong
                .lock()
                .unwrap()
                .push(format!("{device}: {error}")),
            Err(error) => load
                .wrong
                .lock()
                .unwrap()
                .push(format!("{device}: {error}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_decides_from_the_last_view_and_reconciles() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const CHANGED: &str = "EASCHANGED";
    let mut redis = tokio::task::spawn_blocking(seg_testbed::redis::RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server starts (scripts/install-deps.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    let exchange = Arc::new(TestExchange::start(|_| {}).await.unwrap());
    let ens = uem::WebhookReceiver::start().await.unwrap();
    let uem = UemServer::spawn(
        harness::local_listener().await.unwrap(),
        None,
        UemConfig::new(vec![
            Device::new(KEPT, 1, ALICE),
            Device::new(WIPED, 2, ALICE),
            Device::new(CHANGED, 3, ALICE),
        ]),
    )
    .unwrap();
    uem.update(WIPED, Change::EnterpriseWipe).unwrap();
    let mut nodes = Vec::new();
    for index in 0..2 {
        let mut config = gateway_config(
            &exchange,
            &uem,
            &format!("{}/gateway/compliance", ens.url()),
            reserve_port().unwrap(),
            dir.path().join(format!("unused-{index}.snapshot")),
            dir.path(),
        );
        share_through_redis(
            &mut config,
            &redis.url(),
            Duration::from_secs(1),
            &format!("node-{index}"),
        );
        let node = start(config).await;
        wait_ready(&node).await;
        nodes.push(node);
    }
    let blocked_on = |node: &Gateway, device: &str| {
        !node
            .compliance()
            .unwrap()
            .0
            .decide(Some(device), None)
            .is_allowed()
    };
    wait_until(STEP, "the wiped device blocked on both nodes", || {
        let blocked = nodes.iter().all(|node| blocked_on(node, WIPED));
        async move { blocked }
    })
    .await
    .unwrap();

    // Load: two clients per node.
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for node in nodes.iter().chain(nodes.iter()) {
        clients.spawn(generate_load(
            http_base(node),
            exchange.clone(),
            load.clone(),
            stop.clone(),
        ));
    }
    let answered_after = |n: usize| {
        let target = load.answered.load(Ordering::Relaxed) + n;
        let load = load.clone();
        move || {
            let reached = load.answered.load(Ordering::Relaxed) >= target;
            async move { reached }
        }
    };
    wait_until(STEP, "load", answered_after(20)).await.unwrap();

    // Redis is killed (SIGKILL) while the requests go on.
    redis.stop();
    for node in &nodes {
        wait_until(STEP, "the node to notice redis is down", || async {
            admin_metric(node, "seg_compliance_redis_up").await == Some(0.0)
                && admin_metric(node, "seg_compliance_redis_errors_total")
                    .await
                    .unwrap_or(0.0)
                    > 0.0
        })
        .await
        .unwrap();
    }
    wait_until(STEP, "load while redis is down", answered_after(40))
        .await
        .unwrap();
    // A change made meanwhile on one node holds there at once, queued for the others.
    assert_eq!(
        admin_device_override(&nodes[0], CHANGED, Some("block")).await,
        StatusCode::OK
    );
    assert!(blocked_on(&nodes[0], CHANGED));
    assert!(!blocked_on(&nodes[1], CHANGED));

    // Redis returns: the change reaches the other node; nothing was undone.
    tokio::task::block_in_place(|| redis.restart()).unwrap();
    wait_until(STEP, "the change to reach the other node", || {
        let reconciled = blocked_on(&nodes[1], CHANGED);
        async move { reconciled }
    })
    .await
    .unwrap();
    wait_until(STEP, "load after redis is back", answered_after(20))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    while let Some(client) = clients.join_next().await {
        client.unwrap();
    }

    let wrong = load.wrong.lock().unwrap().clone();
    assert!(
        wrong.is_empty(),
        "{} of {} requests not answered as before: {wrong:?}",
        wrong.len(),
        load.answered.load(Ordering::Relaxed) + wrong.len()
    );
    for node in &nodes {
        assert!(blocked_on(node, WIPED));
        assert_eq!(
            admin_metric(node, "seg_compliance_redis_up").await,
            Some(1.0)
        );
    }
    eprintln!(
        "{} requests answered as before across the outage",
        load.answered.load(Ordering::Relaxed)
    );
}
