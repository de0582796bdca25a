//! Every EWS operation ENS uses, through the gateway to the faithful Exchange stand-in over TLS:
//! answers arrive intact, Exchange's challenges and affinity survive the trip, HTTP/2 clients
//! are served.

mod support;

use http::{StatusCode, header};
use seg_proxy::Gateway;
use seg_proxy::config::TlsFiles;
use seg_testbed::exchange::AFFINITY_COOKIE;
use seg_testbed::harness::{self, TestExchange, xml_attribute, xml_text};
use support::*;

const GET_INBOX: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;
const PULL_SUBSCRIBE: &str = r#"<m:Subscribe><m:PullSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes><t:Timeout>10</t:Timeout></m:PullSubscriptionRequest></m:Subscribe>"#;
const STREAMING_SUBSCRIBE: &str = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;
const ALICE: &str = "alice@test.local";

/// The test Exchange over TLS, and a gateway over TLS trusting its CA.
struct Stand {
    exchange: TestExchange,
    gateway: Gateway,
    ews_url: String,
    _dir: tempfile::TempDir,
}

impl Stand {
    async fn start() -> Stand {
        let dir = tempfile::tempdir().unwrap();
        let mut exchange = TestExchange::start(|_| {}).await.unwrap();
        let files = exchange.pki.write_to(dir.path()).unwrap().clone();
        let mut config = config_for(&exchange.server.base_url());
        config.listen.http = None;
        config.listen.https = Some("127.0.0.1:0".parse().unwrap());
        config.tls = Some(TlsFiles {
            cert: files.server_cert.clone(),
            key: files.server_key.clone(),
        });
        config.exchange.trust_store = Some(files.ca.clone());
        let gateway = start(config).await;
        let ews_url = format!(
            "https://localhost:{}/EWS/Exchange.asmx",
            gateway.https_addr().unwrap().port()
        );
        Stand {
            exchange,
            gateway,
            ews_url,
            _dir: dir,
        }
    }

    /// Sends an operation through the gateway; returns status, headers and body text.
    async fn ews(
        &self,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        operation: &str,
    ) -> (StatusCode, http::HeaderMap, String) {
        let request = harness::ews_request(&self.ews_url, auth, headers, soap(operation)).unwrap();
        let response = self.exchange.client.send(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, text(response).await)
    }

    fn alice(&self) -> String {
        self.exchange.basic(ALICE)
    }
}

fn response_code(body: &str) -> String {
    xml_text(body, "ResponseCode").unwrap_or_else(|| panic!("no ResponseCode in {body}"))
}

#[tokio::test]
async fn pull_subscription_lifecycle_works_through_the_gateway() {
    let stand = Stand::start().await;
    let alice = stand.alice();

    let (status, _, folder) = stand.ews(Some(&alice), &[], GET_INBOX).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(xml_text(&folder, "DisplayName").as_deref(), Some("Inbox"));

    let (_, _, subscribed) = stand.ews(Some(&alice), &[], PULL_SUBSCRIBE).await;
    assert_eq!(response_code(&subscribed), "NoError");
    let subscription = xml_text(&subscribed, "SubscriptionId").unwrap();
    let watermark = xml_text(&subscribed, "Watermark").unwrap();

    let delivered = stand
        .exchange
        .server
        .deliver(ALICE, "Through the gateway")
        .unwrap();
    let (_, _, events) = stand
        .ews(Some(&alice), &[], &format!("<m:GetEvents><m:SubscriptionId>{subscription}</m:SubscriptionId><m:Watermark>{watermark}</m:Watermark></m:GetEvents>"))
        .await;
    assert_eq!(response_code(&events), "NoError");
    assert_eq!(
        xml_attribute(&events, "ItemId", "Id"),
        Some(delivered.id.clone())
    );

    let (_, _, item) = stand
        .ews(Some(&alice), &[], &format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{}"/></m:ItemIds></m:GetItem>"#, delivered.id))
        .await;
    assert_eq!(
        xml_text(&item, "Subject").as_deref(),
        Some("Through the gateway")
    );

    let (_, _, unsubscribed) = stand
        .ews(
            Some(&alice),
            &[],
            &format!(
                "<m:Unsubscribe><m:SubscriptionId>{subscription}</m:SubscriptionId></m:Unsubscribe>"
            ),
        )
        .await;
    assert_eq!(response_code(&unsubscribed), "NoError");

    let operations: Vec<String> = stand
        .exchange
        .server
        .requests()
        .into_iter()
        .filter_map(|r| r.operation)
        .collect();
    assert_eq!(
        operations,
        [
            "GetFolder",
            "Subscribe",
            "GetEvents",
            "GetItem",
            "Unsubscribe"
        ]
    );
}

#[tokio::test]
async fn streaming_subscription_keeps_exchange_affinity_through_the_gateway() {
    let stand = Stand::start().await;
    let alice = stand.alice();
    let affinity = [
        ("X-AnchorMailbox", ALICE),
        ("X-PreferServerAffinity", "true"),
    ];
    let (_, headers, subscribed) = stand
        .ews(Some(&alice), &affinity, STREAMING_SUBSCRIBE)
        .await;
    let subscription = xml_text(&subscribed, "SubscriptionId").unwrap();
    let set_cookie = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert_eq!(
        cookie,
        format!(
            "{AFFINITY_COOKIE}={}",
            stand.exchange.server.affinity_cookie(ALICE)
        )
    );

    // Exchange only finds the subscription when the cookie and anchor come back unchanged.
    let stream_request = harness::ews_request(
        &stand.ews_url,
        Some(&alice),
        &[("X-AnchorMailbox", ALICE), ("Cookie", &cookie)],
        soap(&format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{subscription}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>5</m:ConnectionTimeout></m:GetStreamingEvents>")),
    )
    .unwrap();
    let response = stand.exchange.client.send(stream_request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let delivered = stand.exchange.server.deliver(ALICE, "Streamed").unwrap();
    let item = loop {
        let chunk = next_chunk(&mut body)
            .await
            .expect("the stream stays open until the notification");
        let chunk = String::from_utf8_lossy(&chunk).into_owned();
        assert_ne!(
            xml_text(&chunk, "ResponseCode").as_deref(),
            Some("ErrorSubscriptionNotFound"),
            "affinity lost: {chunk}"
        );
        if let Some(item) = xml_attribute(&chunk, "ItemId", "Id") {
            break item;
        }
    };
    assert_eq!(item, delivered.id);
}

#[tokio::test]
async fn exchange_challenges_reach_the_client_as_separate_headers_in_order() {
    let stand = Stand::start().await;
    let (status, headers, _) = stand.ews(None, &[], GET_INBOX).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(challenges.len(), 3, "{challenges:?}");
    assert_eq!(challenges[0], "Negotiate");
    assert_eq!(challenges[1], "NTLM");
    assert!(challenges[2].starts_with("Basic realm="), "{challenges:?}");
}

#[tokio::test]
async fn bearer_token_passes_through_untouched() {
    let stand = Stand::start().await;
    let token = stand
        .exchange
        .tokens
        .issue(ALICE, std::time::Duration::from_secs(300))
        .unwrap();
    let bearer = format!("Bearer {token}");
    let (status, _, folder) = stand.ews(Some(&bearer), &[], GET_INBOX).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(xml_text(&folder, "DisplayName").as_deref(), Some("Inbox"));
    let seen = stand.exchange.server.requests().pop().unwrap();
    assert_eq!(seen.headers[header::AUTHORIZATION], bearer.as_str());
}

#[tokio::test]
async fn wsdl_is_served_through_the_gateway() {
    let stand = Stand::start().await;
    let url = stand
        .ews_url
        .replace("/EWS/Exchange.asmx", "/ews/services.wsdl");
    let request = http::Request::get(url)
        .header(header::AUTHORIZATION, stand.alice())
        .body(http_body_util::Full::default())
        .unwrap();
    let response = stand.exchange.client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(text(response).await.contains("definitions"));
}

#[tokio::test]
async fn http2_clients_are_served_over_the_tls_listener() {
    let stand = Stand::start().await;
    let mut sender = stand
        .exchange
        .client
        .connect_h2(stand.gateway.https_addr().unwrap(), "localhost")
        .await
        .unwrap();
    let request =
        harness::ews_request(&stand.ews_url, Some(&stand.alice()), &[], soap(GET_INBOX)).unwrap();

    let response = sender.send_request(request).await.unwrap();

    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        xml_text(&text(response).await, "DisplayName").as_deref(),
        Some("Inbox")
    );
}

/// More open streams than one HTTP/2 connection to Exchange can carry (the stand-in, like any
/// hyper server, allows 200 concurrent streams per connection; IIS 100) must not stall the
/// gateway: it opens another HTTP/2 connection when one is full, and other requests still pass.
#[tokio::test]
async fn open_streams_beyond_one_http2_connection_do_not_stall_other_requests() {
    const STREAMS: usize = 210;
    let stand = Stand::start().await;
    let alice = stand.alice();
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let (status, _, subscribed) = stand.ews(Some(&alice), &[], STREAMING_SUBSCRIBE).await;
        assert_eq!(status, StatusCode::OK, "{subscribed}");
        let subscription = xml_text(&subscribed, "SubscriptionId").unwrap();
        let request = harness::ews_request(
            &stand.ews_url,
            Some(&alice),
            &[],
            soap(&format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{subscription}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>5</m:ConnectionTimeout></m:GetStreamingEvents>")),
        )
        .unwrap();
        let response = harness::within(
            STEP,
            "a stream's headers",
            stand.exchange.client.send(request),
        )
        .await
        .expect("every stream opens")
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }

    let answered = harness::within(
        STEP,
        "GetFolder beside the open streams",
        stand.ews(Some(&alice), &[], GET_INBOX),
    )
    .await;
    let (status, _, body) = answered.expect("GetFolder is answered while the streams stay open");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response_code(&body), "NoError");
    assert_eq!(streams.len(), STREAMS);
}
