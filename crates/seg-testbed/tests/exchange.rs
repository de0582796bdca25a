//! The Exchange stand-in over real sockets and TLS: authentication, folders, items, the three
//! kinds of subscription, affinity and faults, as an EWS client sees them.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use seg_testbed::exchange::AFFINITY_COOKIE;
use seg_testbed::harness::{
    self, TestExchange, basic_auth, body_text, next_chunk, wait_until, xml_attribute, xml_text,
};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(10);

const GET_INBOX: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#;

const PULL_SUBSCRIBE: &str = r#"<m:Subscribe><m:PullSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType><t:EventType>CreatedEvent</t:EventType></t:EventTypes><t:Timeout>10</t:Timeout></m:PullSubscriptionRequest></m:Subscribe>"#;

const STREAMING_SUBSCRIBE: &str = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;

fn get_events(subscription_id: &str, watermark: &str) -> String {
    format!(
        "<m:GetEvents><m:SubscriptionId>{subscription_id}</m:SubscriptionId><m:Watermark>{watermark}</m:Watermark></m:GetEvents>"
    )
}

fn get_streaming_events(subscription_id: &str, minutes: u32) -> String {
    format!(
        "<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{subscription_id}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>{minutes}</m:ConnectionTimeout></m:GetStreamingEvents>"
    )
}

async fn ews_text(
    testbed: &TestExchange,
    authorization: &str,
    headers: &[(&str, &str)],
    operation: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let response = testbed
        .ews(authorization, headers, operation)
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body_text(body).await.unwrap())
}

async fn subscribe_pull(testbed: &TestExchange) -> (String, String) {
    let (status, _, body) = ews_text(
        testbed,
        &testbed.basic("alice@test.local"),
        &[],
        PULL_SUBSCRIBE,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        xml_text(&body, "SubscriptionId").unwrap(),
        xml_text(&body, "Watermark").unwrap(),
    )
}

#[tokio::test]
async fn basic_credentials_open_the_inbox_with_its_counts() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    testbed.server.deliver("alice@test.local", "one").unwrap();

    let (status, headers, body) =
        ews_text(&testbed, &testbed.basic("alice@test.local"), &[], GET_INBOX).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/xml; charset=utf-8");
    assert!(body.contains(r#"ResponseClass="Success""#), "{body}");
    assert!(body.contains(r#"MajorVersion="15""#), "{body}");
    assert_eq!(xml_text(&body, "DisplayName").as_deref(), Some("Inbox"));
    assert_eq!(xml_text(&body, "TotalCount").as_deref(), Some("1"));
    assert_eq!(xml_text(&body, "UnreadCount").as_deref(), Some("1"));
    assert_eq!(xml_text(&body, "ChildFolderCount").as_deref(), Some("0"));
    assert!(xml_attribute(&body, "FolderId", "ChangeKey").is_some());
}

#[tokio::test]
async fn a_wrong_password_gets_401_with_negotiate_ntlm_and_basic_challenges_in_that_order() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();

    let (status, headers, _) = ews_text(
        &testbed,
        &basic_auth("alice@test.local", "wrong"),
        &[],
        GET_INBOX,
    )
    .await;

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenges: Vec<_> = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        ["Negotiate", "NTLM", "Basic realm=\"127.0.0.1\""]
    );
}

#[tokio::test]
async fn negotiate_is_answered_with_the_challenges_for_now() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let (status, headers, _) = ews_text(
        &testbed,
        "Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag",
        &[],
        GET_INBOX,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers.get_all(header::WWW_AUTHENTICATE).iter().count(), 3);
}

#[tokio::test]
async fn a_valid_bearer_token_is_accepted_and_an_expired_one_is_not() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let token = testbed
        .tokens
        .issue("bob@test.local", Duration::from_secs(300))
        .unwrap();
    let expired = testbed
        .tokens
        .issue_claims(&serde_json::json!({"aud": testbed.tokens.audience(), "exp": 1, "upn": "bob@test.local"}))
        .unwrap();

    let (ok, _, body) = ews_text(&testbed, &format!("Bearer {token}"), &[], GET_INBOX).await;
    let (refused, headers, _) =
        ews_text(&testbed, &format!("Bearer {expired}"), &[], GET_INBOX).await;

    assert_eq!(ok, StatusCode::OK, "{body}");
    assert_eq!(refused, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("x-ms-diagnostics"));
}

#[tokio::test]
async fn pull_subscription_reports_new_mail_whose_item_has_the_delivered_subject() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let alice = testbed.basic("alice@test.local");
    let (subscription, watermark) = subscribe_pull(&testbed).await;
    let delivered = testbed
        .server
        .deliver("alice@test.local", "Quarterly numbers")
        .unwrap();

    let (_, _, events) = ews_text(
        &testbed,
        &alice,
        &[],
        &get_events(&subscription, &watermark),
    )
    .await;
    assert!(events.contains("<t:NewMailEvent>"), "{events}");
    assert!(events.contains("<t:CreatedEvent>"), "{events}");
    assert_eq!(xml_text(&events, "MoreEvents").as_deref(), Some("false"));
    assert_eq!(xml_text(&events, "PreviousWatermark"), Some(watermark));
    let item_id = xml_attribute(&events, "ItemId", "Id").unwrap();
    assert_eq!(item_id, delivered.id);

    let get_item = format!(
        r#"<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>"#
    );
    let (_, _, item) = ews_text(&testbed, &alice, &[], &get_item).await;
    assert_eq!(
        xml_text(&item, "Subject").as_deref(),
        Some("Quarterly numbers")
    );
    assert_eq!(xml_text(&item, "IsRead").as_deref(), Some("false"));
    assert_eq!(
        xml_text(&item, "EmailAddress").as_deref(),
        Some("alice@test.local")
    );
}

#[tokio::test]
async fn id_only_shapes_return_the_id_and_exactly_the_additional_properties() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let alice = testbed.basic("alice@test.local");
    let delivered = testbed
        .server
        .deliver("alice@test.local", "Shaped")
        .unwrap();
    let get_item = |additional: &str| {
        format!(
            r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>{additional}</m:ItemShape><m:ItemIds><t:ItemId Id="{}"/></m:ItemIds></m:GetItem>"#,
            delivered.id
        )
    };

    let (_, _, bare) = ews_text(&testbed, &alice, &[], &get_item("")).await;
    let (_, _, shaped) = ews_text(
        &testbed,
        &alice,
        &[],
        &get_item(r#"<t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="message:IsRead"/></t:AdditionalProperties>"#),
    )
    .await;
    let (_, _, folder) = ews_text(
        &testbed,
        &alice,
        &[],
        r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="folder:TotalCount"/></t:AdditionalProperties></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#,
    )
    .await;

    assert_eq!(xml_attribute(&bare, "ItemId", "Id"), Some(delivered.id));
    assert_eq!(xml_text(&bare, "Subject"), None, "{bare}");
    assert_eq!(xml_text(&shaped, "Subject").as_deref(), Some("Shaped"));
    assert_eq!(xml_text(&shaped, "IsRead").as_deref(), Some("false"));
    assert!(!shaped.contains("<t:Body"), "{shaped}");
    assert_eq!(xml_text(&folder, "TotalCount").as_deref(), Some("1"));
    assert_eq!(xml_text(&folder, "DisplayName"), None, "{folder}");
}

#[tokio::test]
async fn get_events_after_acknowledging_everything_returns_a_status_event() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let alice = testbed.basic("alice@test.local");
    let (subscription, watermark) = subscribe_pull(&testbed).await;
    testbed.server.deliver("alice@test.local", "x").unwrap();
    let (_, _, first) = ews_text(
        &testbed,
        &alice,
        &[],
        &get_events(&subscription, &watermark),
    )
    .await;
    let last = first
        .match_indices("<t:Watermark>")
        .last()
        .map(|(at, _)| xml_text(&first[at..], "Watermark").unwrap())
        .unwrap();

    let (_, _, second) = ews_text(&testbed, &alice, &[], &get_events(&subscription, &last)).await;

    assert!(second.contains("<t:StatusEvent>"), "{second}");
    assert!(!second.contains("NewMailEvent"), "{second}");
}

#[tokio::test]
async fn an_unknown_subscription_is_not_found() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let (_, _, body) = ews_text(
        &testbed,
        &testbed.basic("alice@test.local"),
        &[],
        &get_events("AAAAAAAA", "AAAA"),
    )
    .await;
    assert_eq!(
        xml_text(&body, "ResponseCode").as_deref(),
        Some("ErrorSubscriptionNotFound")
    );
}

#[tokio::test]
async fn another_users_subscription_is_refused() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let (subscription, watermark) = subscribe_pull(&testbed).await;
    let (_, _, body) = ews_text(
        &testbed,
        &testbed.basic("bob@test.local"),
        &[],
        &get_events(&subscription, &watermark),
    )
    .await;
    assert_eq!(
        xml_text(&body, "ResponseCode").as_deref(),
        Some("ErrorSubscriptionAccessDenied")
    );
}

#[tokio::test]
async fn streaming_notifications_arrive_chunk_by_chunk_before_the_stream_ends() {
    let testbed = TestExchange::start(|config| {
        config.minute = Duration::from_secs(2);
        config.keepalive_interval = Duration::from_millis(100);
    })
    .await
    .unwrap();
    let alice = testbed.basic("alice@test.local");
    let (_, _, subscribed) = ews_text(&testbed, &alice, &[], STREAMING_SUBSCRIBE).await;
    let subscription = xml_text(&subscribed, "SubscriptionId").unwrap();
    assert!(xml_text(&subscribed, "Watermark").is_none(), "{subscribed}");

    let response = testbed
        .ews(&alice, &[], &get_streaming_events(&subscription, 1))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    let keepalive = next_chunk(&mut body, DEADLINE, "the first keep-alive")
        .await
        .unwrap()
        .unwrap();
    let keepalive = String::from_utf8(keepalive.to_vec()).unwrap();
    assert!(
        keepalive.starts_with("<Envelope") && keepalive.ends_with("</Envelope>"),
        "{keepalive}"
    );
    assert_eq!(
        xml_text(&keepalive, "ConnectionStatus").as_deref(),
        Some("OK")
    );

    let delivered = testbed
        .server
        .deliver("alice@test.local", "streamed")
        .unwrap();
    let notification = loop {
        let chunk = next_chunk(&mut body, DEADLINE, "the notification")
            .await
            .unwrap()
            .unwrap();
        let chunk = String::from_utf8(chunk.to_vec()).unwrap();
        if chunk.contains("Notifications") {
            break chunk;
        }
    };
    assert!(notification.starts_with("<Envelope") && notification.ends_with("</Envelope>"));
    assert!(notification.contains("<t:NewMailEvent>"), "{notification}");
    assert_eq!(
        xml_attribute(&notification, "ItemId", "Id"),
        Some(delivered.id)
    );

    let closed = loop {
        let chunk = next_chunk(&mut body, DEADLINE, "the closing status")
            .await
            .unwrap()
            .unwrap();
        let chunk = String::from_utf8(chunk.to_vec()).unwrap();
        if xml_text(&chunk, "ConnectionStatus").as_deref() == Some("Closed") {
            break chunk;
        }
    };
    assert!(closed.ends_with("</Envelope>"));
    assert_eq!(
        next_chunk(&mut body, DEADLINE, "the end of the stream")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn shutting_the_server_down_ends_an_open_stream() {
    let testbed = TestExchange::start(|config| config.keepalive_interval = Duration::from_secs(60))
        .await
        .unwrap();
    let alice = testbed.basic("alice@test.local");
    let (_, _, subscribed) = ews_text(&testbed, &alice, &[], STREAMING_SUBSCRIBE).await;
    let subscription = xml_text(&subscribed, "SubscriptionId").unwrap();
    let mut body = testbed
        .ews(&alice, &[], &get_streaming_events(&subscription, 30))
        .await
        .unwrap()
        .into_body();

    testbed.server.shutdown().await;

    let end = next_chunk(&mut body, DEADLINE, "the stream to end").await;
    assert!(
        matches!(end, Ok(None) | Err(seg_testbed::Error::Http(_))),
        "{end:?}"
    );
}

/// A push callback endpoint: forwards every `SendNotification` body and answers `Unsubscribe`
/// to the first notification carrying a `NewMailEvent`, `OK` otherwise.
async fn callback_server() -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = harness::local_listener().await.unwrap();
    let url = format!("http://{}/ens/callback", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = body_text(request.into_body()).await.unwrap_or_default();
                        let status = if body.contains("NewMailEvent") {
                            "Unsubscribe"
                        } else {
                            "OK"
                        };
                        let _ = tx.send(body);
                        let answer = format!(
                            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{}"><soap:Body><SendNotificationResult xmlns="{}"><SubscriptionStatus>{status}</SubscriptionStatus></SendNotificationResult></soap:Body></soap:Envelope>"#,
                            harness::SOAP_NS,
                            harness::MESSAGES_NS
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, rx)
}

fn push_subscribe(url: &str) -> String {
    format!(
        r#"<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes><t:StatusFrequency>1</t:StatusFrequency><t:URL>{url}</t:URL></m:PushSubscriptionRequest></m:Subscribe>"#
    )
}

#[tokio::test]
async fn an_idle_push_subscription_gets_status_event_heartbeats() {
    let testbed = TestExchange::start(|config| config.minute = Duration::from_millis(100))
        .await
        .unwrap();
    let (url, mut pushes) = callback_server().await;
    let (_, _, subscribed) = ews_text(
        &testbed,
        &testbed.basic("alice@test.local"),
        &[],
        &push_subscribe(&url),
    )
    .await;
    let subscription = xml_text(&subscribed, "SubscriptionId").unwrap();

    let heartbeat = harness::within(DEADLINE, "a heartbeat", pushes.recv())
        .await
        .unwrap()
        .unwrap();

    assert!(heartbeat.contains("SendNotification"), "{heartbeat}");
    assert!(heartbeat.contains("<t:StatusEvent>"), "{heartbeat}");
    assert_eq!(xml_text(&heartbeat, "SubscriptionId"), Some(subscription));
}

#[tokio::test]
async fn push_delivers_new_mail_and_an_unsubscribe_answer_ends_the_subscription() {
    let testbed = TestExchange::start(|config| config.minute = Duration::from_millis(100))
        .await
        .unwrap();
    let (url, mut pushes) = callback_server().await;
    let (_, _, subscribed) = ews_text(
        &testbed,
        &testbed.basic("alice@test.local"),
        &[],
        &push_subscribe(&url),
    )
    .await;
    assert!(xml_text(&subscribed, "Watermark").is_some(), "{subscribed}");
    let delivered = testbed
        .server
        .deliver("alice@test.local", "pushed")
        .unwrap();

    let notification = loop {
        let push = harness::within(DEADLINE, "the push", pushes.recv())
            .await
            .unwrap()
            .unwrap();
        if push.contains("NewMailEvent") {
            break push;
        }
    };
    assert_eq!(
        xml_attribute(&notification, "ItemId", "Id"),
        Some(delivered.id)
    );
    wait_until(DEADLINE, "the subscription to end", || async {
        testbed.server.subscription_count() == 0
    })
    .await
    .unwrap();
    while pushes.try_recv().is_ok() {}
    let quiet = tokio::time::timeout(Duration::from_millis(500), pushes.recv()).await;
    assert!(
        quiet.is_err(),
        "a push arrived after Unsubscribe: {quiet:?}"
    );
}

#[tokio::test]
async fn subscribing_with_affinity_sets_the_backend_cookie_that_later_calls_need() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let alice = testbed.basic("alice@test.local");
    let affinity = [
        ("X-AnchorMailbox", "alice@test.local"),
        ("X-PreferServerAffinity", "true"),
    ];
    let (_, headers, subscribed) = ews_text(&testbed, &alice, &affinity, PULL_SUBSCRIBE).await;
    let subscription = xml_text(&subscribed, "SubscriptionId").unwrap();
    let watermark = xml_text(&subscribed, "Watermark").unwrap();
    let cookie = testbed.server.affinity_cookie("alice@test.local");
    assert!(cookie.starts_with("EXCH01~"), "{cookie}");
    assert_eq!(
        headers[header::SET_COOKIE],
        format!("{AFFINITY_COOKIE}={cookie}; path=/").as_str()
    );

    let (_, _, without) = ews_text(
        &testbed,
        &alice,
        &[],
        &get_events(&subscription, &watermark),
    )
    .await;
    let cookie_header = format!("{AFFINITY_COOKIE}={cookie}");
    let (_, _, with) = ews_text(
        &testbed,
        &alice,
        &[("Cookie", cookie_header.as_str())],
        &get_events(&subscription, &watermark),
    )
    .await;

    assert_eq!(
        xml_text(&without, "ResponseCode").as_deref(),
        Some("ErrorSubscriptionNotFound")
    );
    assert_eq!(xml_text(&with, "ResponseCode").as_deref(), Some("NoError"));
}

#[tokio::test]
async fn malformed_xml_gets_a_schema_validation_fault_and_the_server_keeps_serving() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let alice = testbed.basic("alice@test.local");
    let request = harness::ews_request(
        &testbed.server.url(),
        Some(&alice),
        &[],
        "<s:Envelope><oops",
    )
    .unwrap();

    let response = testbed.client.send(request).await.unwrap();
    let status = response.status();
    let body = body_text(response.into_body()).await.unwrap();

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        xml_text(&body, "faultcode").as_deref(),
        Some("a:ErrorSchemaValidation")
    );
    let (after, _, _) = ews_text(&testbed, &alice, &[], GET_INBOX).await;
    assert_eq!(after, StatusCode::OK);
}

#[tokio::test]
async fn an_unsupported_operation_gets_an_invalid_request_fault() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let (status, _, body) = ews_text(
        &testbed,
        &testbed.basic("alice@test.local"),
        &[],
        "<m:ResolveNames><m:UnresolvedEntry>al</m:UnresolvedEntry></m:ResolveNames>",
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        xml_text(&body, "faultcode").as_deref(),
        Some("a:ErrorInvalidRequest")
    );
}

#[tokio::test]
async fn the_ews_path_matches_in_any_case_and_requests_are_recorded() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let url = format!("{}/ews/exchange.asmx?x=1", testbed.server.base_url());
    let request = harness::ews_request(
        &url,
        Some(&testbed.basic("alice@test.local")),
        &[("X-Device-Id", "BOXER123")],
        harness::soap_envelope(GET_INBOX),
    )
    .unwrap();

    let response = testbed.client.send(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let recorded = testbed.server.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].uri, "/ews/exchange.asmx?x=1");
    assert_eq!(recorded[0].operation.as_deref(), Some("GetFolder"));
    assert_eq!(recorded[0].headers["x-device-id"], "BOXER123");
}

#[tokio::test]
async fn the_deliver_endpoint_raises_events_like_the_handle_does() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let (subscription, watermark) = subscribe_pull(&testbed).await;
    let request = http::Request::post(format!("{}/testbed/deliver", testbed.server.base_url()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            r#"{"mailbox":"alice@test.local","subject":"via http"}"#,
        )))
        .unwrap();

    let response = testbed.client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let json: serde_json::Value =
        serde_json::from_str(&body_text(response.into_body()).await.unwrap()).unwrap();
    let item_id = json["item_id"].as_str().unwrap().to_string();

    let (_, _, events) = ews_text(
        &testbed,
        &testbed.basic("alice@test.local"),
        &[],
        &get_events(&subscription, &watermark),
    )
    .await;
    assert_eq!(xml_attribute(&events, "ItemId", "Id"), Some(item_id));
}

/// One HTTP/2 connection to the stand-in, and a `GetFolder` of the inbox authenticated by
/// `authorization` to send on it.
async fn h2_connection(
    testbed: &TestExchange,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    testbed
        .client
        .connect_h2(testbed.server.addr(), "localhost")
        .await
        .unwrap()
}

fn get_inbox_as(testbed: &TestExchange, authorization: &str) -> http::Request<Full<Bytes>> {
    harness::ews_request(
        &testbed.server.url(),
        Some(authorization),
        &[],
        harness::soap_envelope(GET_INBOX),
    )
    .unwrap()
}

#[tokio::test]
async fn the_server_speaks_h2_when_the_client_offers_it() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let mut sender = h2_connection(&testbed).await;
    let request = get_inbox_as(&testbed, &testbed.basic("alice@test.local"));

    let response = sender.send_request(request).await.unwrap();

    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
}

/// IIS does not support Windows authentication over HTTP/2: it resets such a stream with
/// `HTTP_1_1_REQUIRED` (the client is to send it again over HTTP/1.1) and serves nothing; other
/// streams on the connection go on.
#[tokio::test]
async fn windows_authentication_over_h2_is_reset_with_http_1_1_required() {
    let testbed = TestExchange::start(|_| {}).await.unwrap();
    let mut sender = h2_connection(&testbed).await;
    for authorization in [
        "Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag",
        "NTLM TlRMTVNTUAABAAAA",
    ] {
        let request = get_inbox_as(&testbed, authorization);
        let error = sender.send_request(request).await.unwrap_err();
        let reason = std::error::Error::source(&error)
            .and_then(|source| source.downcast_ref::<h2::Error>())
            .and_then(h2::Error::reason);
        assert_eq!(reason, Some(h2::Reason::HTTP_1_1_REQUIRED), "{error:?}");
    }
    assert!(testbed.server.requests().is_empty(), "nothing was served");

    let request = get_inbox_as(&testbed, &testbed.basic("alice@test.local"));
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn only_the_latest_requests_are_kept_and_every_one_is_counted() {
    let testbed = TestExchange::start(|config| config.record_requests = 2)
        .await
        .unwrap();
    let alice = testbed.basic("alice@test.local");
    for name in ["first", "second", "third"] {
        let (status, _, _) =
            ews_text(&testbed, &alice, &[("X-Request-Name", name)], GET_INBOX).await;
        assert_eq!(status, StatusCode::OK);
    }

    let kept = testbed.server.requests();
    assert_eq!(testbed.server.requests_received(), 3);
    let names: Vec<&str> = kept
        .iter()
        .map(|r| r.headers["x-request-name"].to_str().unwrap())
        .collect();
    assert_eq!(names, ["second", "third"]);
    // The kept bodies are the whole requests (copied out of the read buffer, not emptied).
    assert!(kept.iter().all(|r| {
        let body = String::from_utf8_lossy(&r.body);
        body.contains(GET_INBOX) && body.trim_end().ends_with("Envelope>")
    }));
    assert!(
        kept.iter()
            .all(|r| r.operation.as_deref() == Some("GetFolder"))
    );
}

#[tokio::test]
async fn a_service_time_delays_every_ews_call_by_at_least_that_long() {
    let service_time = Duration::from_millis(100);
    let testbed = TestExchange::start(|config| config.service_time = service_time)
        .await
        .unwrap();
    let alice = testbed.basic("alice@test.local");
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let (status, _, body) = ews_text(&testbed, &alice, &[], GET_INBOX).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(r#"ResponseClass="Success""#), "{body}");
        // A lower bound only: the call cannot be answered before its service time is over.
        assert!(started.elapsed() >= service_time, "{:?}", started.elapsed());
    }
}
