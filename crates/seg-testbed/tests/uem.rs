//! The UEM stand-in over real sockets: the MEM device search with paging, authentication and
//! delta sync, the test controls, signed change events with retries, and every fault mode.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt as _, Full};
use seg_testbed::client::HttpClient;
use seg_testbed::harness::{basic_auth, local_listener, wait_until, within};
use seg_testbed::pki::TestPki;
use seg_testbed::uem::{
    self, Change, DeliveryOutcome, Device, Mode, SECRET_HEADER, SIGNATURE_HEADER, Timestamp,
    UemConfig, UemHandle, UemServer, Webhook, WebhookReceiver,
};
use serde::Deserialize;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(5);

async fn start(devices: Vec<Device>, configure: impl FnOnce(&mut UemConfig)) -> UemHandle {
    let mut config = UemConfig::new(devices);
    configure(&mut config);
    UemServer::spawn(local_listener().await.unwrap(), None, config).unwrap()
}

fn client() -> HttpClient {
    HttpClient::accepting_any_certificate()
}

/// A GET of `url` with these headers; the status, headers and whole body.
async fn get(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .send(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// An authenticated search with this query; the status and the body as JSON (`Null` if empty, a
/// string if not JSON).
async fn search(uem: &UemHandle, query: &str) -> (StatusCode, Value) {
    let authorization = uem.authorization();
    let url = format!("{}?{query}", uem.search_url());
    let headers = [
        ("aw-tenant-code", uem.tenant_code()),
        ("authorization", authorization.as_str()),
        ("accept", "application/json;version=1"),
    ];
    let (status, _, body) = get(&client(), &url, &headers).await;
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    (status, json)
}

/// A POST of `body` to a test control; the status and the answer as JSON.
async fn control(uem: &UemHandle, path: &str, body: &str) -> (StatusCode, Value) {
    let request = http::Request::post(format!("{}{path}", uem.base_url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client().send(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn ids(result: &Value) -> Vec<&str> {
    result["MEMDevices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["EASDeviceID"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn search_pages_1200_devices_in_three_pages_with_the_total_on_each() {
    let uem = start(uem::generate(1_200), |_| {}).await;
    let mut seen = Vec::new();
    for (page, expected) in [(0, 500), (1, 500), (2, 200)] {
        let (status, result) = search(
            &uem,
            &format!("organizationgroupid=7&page={page}&pagesize=500"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (&result["Page"], &result["PageSize"], &result["Total"]),
            (&Value::from(page), &Value::from(500), &Value::from(1_200))
        );
        let page_ids = ids(&result);
        assert_eq!(page_ids.len(), expected);
        seen.extend(page_ids.iter().map(|id| id.to_string()));
    }
    let expected: Vec<String> = (1..=1_200).map(|i| format!("EASDEV{i:06}")).collect();
    assert_eq!(seen, expected);
    let (_, beyond) = search(&uem, "page=3&pagesize=500").await;
    assert_eq!(
        (ids(&beyond).len(), &beyond["Total"]),
        (0, &Value::from(1_200))
    );
}

#[tokio::test]
async fn a_device_record_has_the_reference_fields_and_the_compliance_fields() {
    let devices = Device::parse_list(
        r#"[{"device_id":"EASDEV1","uem_id":1,"user":"alice@test.local","platform":"iOS","model":"iPhone","os_version":"17.1","enrollment":"enrolled","compromised":false,"compliance":"compliant","managed_email_client":true,"last_seen":"2025-05-01T08:00:00Z"}]"#,
    )
    .unwrap();
    let uem = start(devices, |_| {}).await;
    let (_, result) = search(&uem, "").await;
    let record = &result["MEMDevices"][0];
    for (field, value) in [
        ("MEMDeviceID", Value::from(1)),
        ("EASDeviceID", "EASDEV1".into()),
        ("EmailAddress", "alice@test.local".into()),
        ("FriendlyName", "alice iPhone iOS 17.1".into()),
        ("Status", "Allowed".into()),
        ("Reason", "Compliant".into()),
        ("Managed", "TRUE".into()),
        ("EasDeviceType", "iPhone".into()),
        ("Platform", "iOS".into()),
        ("DeviceId", 1.into()),
        ("UserName", "alice".into()),
        ("UserPrincipalName", "alice@test.local".into()),
        ("Model", "iPhone".into()),
        ("OperatingSystem", "17.1".into()),
        ("EnrollmentStatus", "Enrolled".into()),
        ("ComplianceStatus", "Compliant".into()),
        ("CompromisedStatus", false.into()),
        ("ManagedEmailClient", true.into()),
        ("IsEncrypted", true.into()),
        ("ActiveSyncProfileInstalled", true.into()),
        ("LastSeen", "2025-05-01T08:00:00.000000Z".into()),
        ("LastModified", uem.started().to_string().into()),
    ] {
        assert_eq!(record[field], value, "{field}");
    }
    assert_eq!(record.as_object().unwrap().len(), 22);
}

#[tokio::test]
async fn requests_without_the_tenant_code_or_basic_credentials_are_refused() {
    let uem = start(uem::generate(3), |config| {
        config.tenant_code = "TENANT-42".into();
        config.credentials.user = "svc-seg".into();
        config.credentials.password = "right".into();
    })
    .await;
    let url = uem.search_url();
    let good = basic_auth("svc-seg", "right");
    let wrong = basic_auth("svc-seg", "wrong");
    for headers in [
        vec![],
        vec![("aw-tenant-code", "TENANT-42")],
        vec![("authorization", good.as_str())],
        vec![
            ("aw-tenant-code", "TENANT-41"),
            ("authorization", good.as_str()),
        ],
        vec![
            ("aw-tenant-code", "TENANT-42"),
            ("authorization", wrong.as_str()),
        ],
        vec![
            ("aw-tenant-code", "TENANT-42"),
            ("authorization", "Bearer abc"),
        ],
    ] {
        let (status, response_headers, body) = get(&client(), &url, &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(
            response_headers["www-authenticate"],
            "Basic realm=\"AirWatch\""
        );
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["errorCode"], 401);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("missing or invalid")
        );
    }
    let (status, _, _) = get(
        &client(),
        &url,
        &[
            ("aw-tenant-code", "TENANT-42"),
            ("authorization", good.as_str()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let recorded = uem.requests();
    assert_eq!(recorded.len(), 7);
    assert_eq!(recorded[6].method, http::Method::GET);
    assert_eq!(recorded[6].uri, "/API/mem/memdevices/search");
    assert_eq!(recorded[6].headers["aw-tenant-code"], "TENANT-42");
}

#[tokio::test]
async fn xml_only_clients_and_other_organization_groups_are_refused() {
    let uem = start(uem::generate(1), |_| {}).await;
    let authorization = uem.authorization();
    let mut headers = vec![
        ("aw-tenant-code", uem.tenant_code()),
        ("authorization", authorization.as_str()),
        ("accept", "application/xml"),
    ];
    let (status, _, _) = get(&client(), &uem.search_url(), &headers).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    headers.pop();
    let url = format!("{}?organizationgroupid=8", uem.search_url());
    let (status, _, _) = get(&client(), &url, &headers).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, result) = search(&uem, "pagesize=none").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(result["message"].as_str().unwrap().contains("pagesize"));
}

#[tokio::test]
async fn modified_since_returns_only_the_devices_changed_since() {
    let uem = start(uem::generate(10), |_| {}).await;
    let since = uem.started().plus_micros(1);
    let (status, _) = control(&uem, "/testbed/devices/EASDEV000007/noncompliant", "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = control(&uem, "/testbed/devices/EASDEV000003/wipe", "").await;
    assert_eq!(status, StatusCode::OK);
    let query = format!("modifiedsince={since}&pagesize=500");
    let (status, delta) = search(&uem, &query).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&delta), ["EASDEV000007", "EASDEV000003"]);
    assert_eq!(delta["Total"], 2);
    assert_eq!(
        delta["MEMDevices"][1]["EnrollmentStatus"],
        "EnterpriseWiped"
    );
    // Asking again from after the first change leaves it out.
    let first_change = uem.device("EASDEV000007").unwrap().modified;
    let (_, later) = search(
        &uem,
        &format!("modifiedsince={}", first_change.plus_micros(1)),
    )
    .await;
    assert_eq!(ids(&later), ["EASDEV000003"]);
    // From the start, everything.
    let (_, all) = search(&uem, &format!("modifiedsince={}", uem.started())).await;
    assert_eq!(all["Total"], 10);
    // Nothing changed after now.
    let (_, none) = search(
        &uem,
        &format!("modifiedsince={}", Timestamp::now().plus_micros(1_000_000)),
    )
    .await;
    assert_eq!(none["Total"], 0);
}

/// Decodes lower-case hex.
fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_wipe_changes_the_device_and_posts_a_signed_event() {
    let receiver = WebhookReceiver::start().await.unwrap();
    let devices = vec![Device::new("EASDEV1", 1, "alice@test.local")];
    let uem = start(devices, |config| {
        config.webhook = Some(Webhook::new(&receiver.url(), "shared-secret"));
    })
    .await;
    let (status, record) = control(&uem, "/testbed/devices/EASDEV1/wipe", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            &record["EnrollmentStatus"],
            &record["ComplianceStatus"],
            &record["Managed"],
            &record["Status"]
        ),
        (
            &Value::from("EnterpriseWiped"),
            &Value::from("NonCompliant"),
            &Value::from("FALSE"),
            &Value::from("Blocked")
        )
    );
    wait_until(DEADLINE, "the event to arrive", || {
        let arrived = receiver.received().len() == 1;
        async move { arrived }
    })
    .await
    .unwrap();
    let event = &receiver.received()[0];
    assert_eq!(event.path, "/events/compliance");
    assert_eq!(event.headers[SECRET_HEADER], "shared-secret");
    let signature = event.headers[SIGNATURE_HEADER].to_str().unwrap();
    let hex = signature.strip_prefix("sha256=").unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"shared-secret").unwrap();
    mac.update(&event.body);
    mac.verify_slice(&unhex(hex))
        .expect("a valid HMAC-SHA256 of the body");
    let body: Value = serde_json::from_slice(&event.body).unwrap();
    assert_eq!(body["event_type"], "device.wiped");
    assert_eq!(body["device_id"], "EASDEV1");
    assert_eq!(body["device"]["EnrollmentStatus"], "EnterpriseWiped");
    assert_eq!(body["device"], record);
    assert!(Timestamp::parse_rfc3339(body["occurred_at"].as_str().unwrap()).is_some());
    assert_eq!(body["event_id"].as_str().unwrap().len(), 36);
    wait_until(DEADLINE, "the delivery to be recorded", || {
        let delivered = uem.webhook_deliveries()[0].outcome == DeliveryOutcome::Delivered;
        async move { delivered }
    })
    .await
    .unwrap();
    let (_, result) = search(&uem, "").await;
    assert_eq!(result["MEMDevices"][0], record);
}

#[tokio::test]
async fn every_change_sends_its_event_in_order() {
    let receiver = WebhookReceiver::start().await.unwrap();
    let uem = start(uem::generate(2), |config| {
        config.webhook = Some(Webhook::new(&receiver.url(), "s"));
    })
    .await;
    for action in [
        "unenroll",
        "enroll",
        "compromised",
        "compliant",
        "noncompliant",
        "device-wipe",
    ] {
        let (status, _) =
            control(&uem, &format!("/testbed/devices/EASDEV000001/{action}"), "").await;
        assert_eq!(status, StatusCode::OK, "{action}");
    }
    uem.edit("EASDEV000002", |device| device.encrypted = false)
        .unwrap();
    uem.remove_device("EASDEV000002").unwrap();
    let (status, _) = control(
        &uem,
        "/testbed/devices",
        r#"{"device_id":"EASDEV9","user":"carol@test.local"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    wait_until(DEADLINE, "nine events", || {
        let count = receiver.received().len();
        async move { count == 9 }
    })
    .await
    .unwrap();
    let types: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| {
            let event: Value = serde_json::from_slice(&r.body).unwrap();
            format!(
                "{} {}",
                event["event_type"].as_str().unwrap(),
                event["device_id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            "device.unenrolled EASDEV000001",
            "device.enrolled EASDEV000001",
            "device.compromised EASDEV000001",
            "device.compliance_changed EASDEV000001",
            "device.compliance_changed EASDEV000001",
            "device.wiped EASDEV000001",
            "device.updated EASDEV000002",
            "device.deleted EASDEV000002",
            "device.added EASDEV9",
        ]
    );
}

#[tokio::test]
async fn a_failing_webhook_is_retried_then_recorded_as_failed() {
    let receiver = WebhookReceiver::answering(&[], StatusCode::INTERNAL_SERVER_ERROR)
        .await
        .unwrap();
    let uem = start(uem::generate(1), |config| {
        let mut webhook = Webhook::new(&receiver.url(), "s");
        webhook.max_attempts = 3;
        webhook.initial_backoff = Duration::from_millis(10);
        config.webhook = Some(webhook);
    })
    .await;
    uem.update("EASDEV000001", Change::Unenroll).unwrap();
    wait_until(DEADLINE, "the delivery to fail", || {
        let failed = uem.webhook_deliveries()[0].outcome == DeliveryOutcome::Failed;
        async move { failed }
    })
    .await
    .unwrap();
    let delivery = &uem.webhook_deliveries()[0];
    assert_eq!(delivery.event_type, "device.unenrolled");
    let statuses: Vec<_> = delivery.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(StatusCode::INTERNAL_SERVER_ERROR); 3]);
    assert_eq!(receiver.received().len(), 3);
    assert!(receiver.received().iter().all(|r| r.body == delivery.body));
}

#[tokio::test]
async fn a_webhook_that_recovers_gets_the_event_on_a_retry() {
    let receiver = WebhookReceiver::answering(
        &[StatusCode::SERVICE_UNAVAILABLE, StatusCode::BAD_GATEWAY],
        StatusCode::NO_CONTENT,
    )
    .await
    .unwrap();
    let unreachable = local_listener().await.unwrap().local_addr().unwrap();
    let uem = start(uem::generate(2), |config| {
        let mut webhook = Webhook::new(&receiver.url(), "s");
        webhook.initial_backoff = Duration::from_millis(10);
        config.webhook = Some(webhook);
    })
    .await;
    uem.update("EASDEV000001", Change::Noncompliant).unwrap();
    wait_until(DEADLINE, "the delivery", || {
        let done = uem.webhook_deliveries()[0].outcome == DeliveryOutcome::Delivered;
        async move { done }
    })
    .await
    .unwrap();
    let statuses: Vec<_> = uem.webhook_deliveries()[0]
        .attempts
        .iter()
        .map(|a| a.status.map(|s| s.as_u16()))
        .collect();
    assert_eq!(statuses, [Some(503), Some(502), Some(204)]);

    // A receiver that is not listening fails without a status, and the error says why.
    let uem = start(uem::generate(1), |config| {
        let mut webhook = Webhook::new(&format!("http://{unreachable}/events"), "s");
        webhook.max_attempts = 2;
        webhook.initial_backoff = Duration::from_millis(10);
        config.webhook = Some(webhook);
    })
    .await;
    uem.update("EASDEV000001", Change::EnterpriseWipe).unwrap();
    wait_until(DEADLINE, "the delivery to fail", || {
        let failed = uem.webhook_deliveries()[0].outcome == DeliveryOutcome::Failed;
        async move { failed }
    })
    .await
    .unwrap();
    let attempts = &uem.webhook_deliveries()[0].attempts;
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts
            .iter()
            .all(|a| a.status.is_none() && a.error.is_some())
    );
}

#[tokio::test]
async fn fault_modes_break_the_search_as_described_and_normal_mode_restores_it() {
    let uem = start(uem::generate(10), |_| {}).await;

    uem.set_mode(Mode::Down);
    assert_eq!(search(&uem, "").await.0, StatusCode::SERVICE_UNAVAILABLE);

    uem.set_mode(Mode::Garbage);
    let (status, headers, body) = get(
        &client(),
        &uem.search_url(),
        &[
            ("aw-tenant-code", uem.tenant_code()),
            ("authorization", &uem.authorization()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    uem.set_mode(Mode::EmptyList);
    let (status, empty) = search(&uem, "page=0&pagesize=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        empty,
        serde_json::json!({"MEMDevices": [], "Page": 0, "PageSize": 5, "Total": 0})
    );

    uem.set_mode(Mode::NoContent);
    assert_eq!(
        search(&uem, "").await,
        (StatusCode::NO_CONTENT, Value::Null)
    );

    uem.set_mode(Mode::DownFromPage(1));
    assert_eq!(search(&uem, "page=0&pagesize=5").await.0, StatusCode::OK);
    assert_eq!(
        search(&uem, "page=1&pagesize=5").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    uem.set_mode(Mode::Normal);
    let (status, result) = search(&uem, "").await;
    assert_eq!(
        (status, &result["Total"]),
        (StatusCode::OK, &Value::from(10))
    );
}

#[tokio::test]
async fn a_truncated_page_announces_the_whole_body_and_cuts_the_connection() {
    let uem = start(uem::generate(100), |_| {}).await;
    uem.set_mode(Mode::TruncatedPage);
    let authorization = uem.authorization();
    let request = http::Request::get(uem.search_url())
        .header("aw-tenant-code", uem.tenant_code())
        .header("authorization", authorization)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client().send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let announced: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(announced > 10_000);
    let outcome = within(DEADLINE, "the body to end", response.into_body().collect())
        .await
        .unwrap();
    assert!(outcome.is_err(), "the body must fail, not end cleanly");
}

#[tokio::test]
async fn a_slow_server_answers_only_after_its_delay() {
    let uem = start(uem::generate(1), |_| {}).await;
    uem.set_mode(Mode::Slow(Duration::from_millis(300)));
    let impatient = within(Duration::from_millis(50), "a slow answer", search(&uem, "")).await;
    assert!(impatient.is_err());
    let started = Instant::now();
    let (status, _) = search(&uem, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn the_mode_can_be_set_through_the_test_controls() {
    let uem = start(uem::generate(1), |_| {}).await;
    let (status, answer) = control(&uem, "/testbed/mode", r#"{"mode":"slow","delay_ms":20}"#).await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::OK,
            serde_json::json!({"mode":"slow","delay_ms":20})
        )
    );
    assert_eq!(uem.mode(), Mode::Slow(Duration::from_millis(20)));
    control(&uem, "/testbed/mode", r#"{"mode":"down"}"#).await;
    assert_eq!(search(&uem, "").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, answer) = control(&uem, "/testbed/mode", r#"{"mode":"sideways"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().starts_with("not a mode"));
    assert_eq!(uem.mode(), Mode::Down);
}

#[tokio::test]
async fn test_controls_answer_bad_input_with_a_message_not_a_panic() {
    let uem = start(uem::generate(1), |_| {}).await;
    for (path, body, status) in [
        ("/testbed/devices", "{not json", StatusCode::BAD_REQUEST),
        (
            "/testbed/devices",
            r#"{"device_id":"X"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/testbed/devices",
            r#"{"device_id":"X","user":"u","last_seen":"soon"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/testbed/devices",
            r#"{"device_id":"EASDEV000001","user":"u"}"#,
            StatusCode::CONFLICT,
        ),
        ("/testbed/devices/NOPE/wipe", "", StatusCode::NOT_FOUND),
        (
            "/testbed/devices/EASDEV000001/explode",
            "",
            StatusCode::NOT_FOUND,
        ),
        ("/testbed/mode", "", StatusCode::BAD_REQUEST),
    ] {
        let (answered, answer) = control(&uem, path, body).await;
        assert_eq!(answered, status, "{path} {body}");
        assert!(
            !answer["error"].as_str().unwrap().is_empty(),
            "{path} {body}"
        );
    }
    let (status, added) = control(
        &uem,
        "/testbed/devices",
        r#"{"device_id":"EAS NEW","user":"dave@test.local","compliance":"pending"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (&added["MEMDeviceID"], &added["ComplianceStatus"]),
        (&Value::from(2), &Value::from("Pending"))
    );
    let (status, _, record) = get(
        &client(),
        &format!("{}/testbed/devices/EAS%20NEW", uem.base_url()),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let record: Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(record["EASDeviceID"], "EAS NEW");
    assert_eq!(search(&uem, "").await.1["Total"], 2);
}

#[tokio::test]
async fn the_api_is_served_over_tls() {
    let pki = TestPki::in_memory(&[]).unwrap();
    let uem = UemServer::spawn(
        local_listener().await.unwrap(),
        Some(pki.server_config().unwrap()),
        UemConfig::new(uem::generate(2)),
    )
    .unwrap();
    assert!(uem.base_url().starts_with("https://127.0.0.1:"));
    let client = HttpClient::trusting(pki.root_store());
    let authorization = uem.authorization();
    let (status, _, body) = get(
        &client,
        &uem.search_url(),
        &[
            ("aw-tenant-code", uem.tenant_code()),
            ("authorization", &authorization),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let result: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(result["Total"], 2);
    uem.shutdown().await;
}

#[tokio::test]
async fn a_million_devices_are_served_page_by_page() {
    #[derive(Deserialize)]
    struct Record {
        #[serde(rename = "EASDeviceID")]
        id: String,
    }
    #[derive(Deserialize)]
    struct Page {
        #[serde(rename = "MEMDevices")]
        devices: Vec<Record>,
        #[serde(rename = "Total")]
        total: usize,
    }
    const N: usize = 1_000_000;
    const PAGE_SIZE: usize = 10_000;
    let uem = start(uem::generate(N), |_| {}).await;
    let client = client();
    let authorization = uem.authorization();
    let headers = [
        ("aw-tenant-code", uem.tenant_code()),
        ("authorization", authorization.as_str()),
    ];
    let mut next = 1;
    for page in 0..N / PAGE_SIZE {
        let url = format!("{}?page={page}&pagesize={PAGE_SIZE}", uem.search_url());
        let (status, _, body) = get(&client, &url, &headers).await;
        assert_eq!(status, StatusCode::OK);
        let page: Page = serde_json::from_slice(&body).unwrap();
        assert_eq!((page.total, page.devices.len()), (N, PAGE_SIZE));
        for record in page.devices {
            assert_eq!(record.id, format!("EASDEV{next:06}"));
            next += 1;
        }
    }
    assert_eq!(next - 1, N);
}

#[tokio::test]
async fn only_the_latest_api_requests_are_kept_and_every_one_is_counted() {
    let uem = start(uem::generate(3), |config| config.record_requests = 1).await;
    for page in 0..3 {
        let (status, _) = search(&uem, &format!("page={page}&pagesize=1")).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Test controls are not API requests: neither kept nor counted.
    let (status, _) = control(&uem, "/testbed/mode", r#"{"mode": "normal"}"#).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(uem.requests_received(), 3);
    let kept = uem.requests();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].uri.contains("page=2"), "{}", kept[0].uri);
    assert_eq!(kept[0].headers["accept"], "application/json;version=1");

    // The same, as the test control lists it: each header a [name, value] pair.
    let url = format!("{}/testbed/requests", uem.base_url());
    let (status, _, body) = get(&client(), &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Value = serde_json::from_slice(&body).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0]["uri"].as_str().unwrap().contains("page=2"));
    let headers = listed[0]["headers"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["accept", "application/json;version=1"])),
        "{headers:?}"
    );
}
