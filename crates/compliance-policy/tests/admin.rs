//! The admin API, called through the router with `oneshot`: no sockets.

use axum::Router;
use axum::body::Body;
use compliance_policy::admin::{AdminState, MAX_EVENT_BODY, MAX_PAGE_LIMIT, router};
use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use compliance_policy::policy::PolicySettings;
use compliance_policy::state::{ChangeSource, Compliance};
use compliance_policy::sync::SyncHandle;
use compliance_policy::view::Change;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::ServiceExt;

const TOKEN: &str = "admin-s3cret";
const SECRET: &str = "hook-s3cret";

fn phone(id: &str, user: &str, device_type: &str, client: &str) -> DeviceRecord {
    DeviceRecord {
        device_id: DeviceId::new(id),
        user: Some(user.into()),
        email: Some(user.replace("@test.local", "@corp.example").into()),
        eas_device_type: Some(device_type.into()),
        mail_client: Some(client.into()),
        enrollment: Enrollment::Enrolled,
        compliance: ComplianceStatus::Compliant,
        managed: true,
        ..Default::default()
    }
}

/// A1, A2 (alice) and B1 (bob) compliant; W1 (bob) enterprise-wiped.
fn devices() -> Vec<DeviceRecord> {
    vec![
        phone("A1", "alice@test.local", "iPhone", "Boxer"),
        phone("A2", "alice@test.local", "Android", "Outlook"),
        phone("B1", "bob@test.local", "iPhone", "Boxer"),
        DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..phone("W1", "bob@test.local", "iPhone", "Outlook")
        },
    ]
}

/// The test parser: a JSON list of device records, each an upsert; counts its calls.
fn counting_parser(
    calls: Arc<AtomicUsize>,
) -> impl Fn(&[u8]) -> Result<Vec<Change>, String> + Send + Sync + 'static {
    move |body: &[u8]| {
        calls.fetch_add(1, Ordering::SeqCst);
        let records: Vec<DeviceRecord> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        Ok(records.into_iter().map(Change::Upsert).collect())
    }
}

struct Admin {
    compliance: Compliance,
    app: Router,
    parsed: Arc<AtomicUsize>,
}

fn admin_with(configure: impl FnOnce(AdminState) -> AdminState) -> Admin {
    let compliance = Compliance::new(PolicySettings::default());
    compliance.replace_all(devices(), ChangeSource::FullSync);
    let parsed = Arc::new(AtomicUsize::new(0));
    let state = AdminState::new(compliance.clone(), counting_parser(parsed.clone()));
    Admin {
        compliance,
        app: router(configure(state)),
        parsed,
    }
}

fn admin() -> Admin {
    admin_with(|state| {
        state
            .with_admin_token(TOKEN)
            .with_webhook_secret(SECRET)
            .with_sync(SyncHandle::default())
    })
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: body.to_vec(),
    }
}

fn request(method: Method, uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

async fn get(app: &Router, uri: &str) -> Answer {
    send(app, request(Method::GET, uri, Some(TOKEN), "")).await
}

fn event(secret: Option<&str>, signature: Option<String>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::post("/events/compliance");
    if let Some(secret) = secret {
        builder = builder.header("x-seg-webhook-secret", secret);
    }
    if let Some(signature) = signature {
        builder = builder.header("x-seg-signature", signature);
    }
    builder.body(body.into()).unwrap()
}

fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn wipe_event(id: &str) -> String {
    let wiped = DeviceRecord {
        enrollment: Enrollment::EnterpriseWiped,
        ..phone(id, "alice@test.local", "iPhone", "Boxer")
    };
    serde_json::to_string(&[wiped]).unwrap()
}

/// Every protected endpoint, with a body that would change state if accepted.
fn protected_requests() -> Vec<(Method, &'static str, &'static str)> {
    vec![
        (Method::GET, "/policy/device/A1", ""),
        (Method::GET, "/policy/account/alice@test.local", ""),
        (Method::GET, "/policy/easdevicetype/iPhone", ""),
        (Method::GET, "/policy/mailclient/Boxer", ""),
        (Method::GET, "/devices?state=blocked", ""),
        (Method::GET, "/sync", ""),
        (Method::POST, "/sync", ""),
        (Method::PUT, "/overrides/device/W1", r#"{"action":"allow"}"#),
        (Method::DELETE, "/overrides/device/W1", ""),
        (
            Method::PUT,
            "/overrides/user/alice@test.local",
            r#"{"action":"block"}"#,
        ),
        (Method::DELETE, "/overrides/user/alice@test.local", ""),
    ]
}

#[tokio::test]
async fn healthz_is_open_and_answers_ok() {
    let admin = admin_with(|state| state);
    let answer = send(&admin.app, request(Method::GET, "/healthz", None, "")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, b"ok");
}

#[tokio::test]
async fn readyz_is_503_until_the_first_view_is_loaded() {
    let compliance = Compliance::new(PolicySettings::default());
    let app = router(AdminState::new(compliance.clone(), |_: &[u8]| Ok(vec![])));
    let before = send(&app, request(Method::GET, "/readyz", None, "")).await;
    assert_eq!(before.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        before.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("no compliance view loaded")
    );

    compliance.replace_all(devices(), ChangeSource::FullSync);
    let after = send(&app, request(Method::GET, "/readyz", None, "")).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.json(), json!({"ready": true}));
}

#[tokio::test]
async fn protected_endpoints_refuse_a_missing_or_wrong_token_and_change_nothing() {
    let admin = admin();
    for token in [
        None,
        Some("wrong"),
        Some("admin-s3cre"),
        Some("admin-s3cretX"),
    ] {
        for (method, uri, body) in protected_requests() {
            let answer = send(&admin.app, request(method.clone(), uri, token, body)).await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} {token:?}"
            );
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
            assert!(answer.json()["error"].is_string());
        }
    }
    let view = admin.compliance.view();
    assert!(view.overrides().devices.is_empty() && view.overrides().users.is_empty());
    assert!(!admin.compliance.decide(Some("W1"), None).is_allowed());
}

#[tokio::test]
async fn without_a_configured_token_every_protected_endpoint_is_refused() {
    let admin = admin_with(|state| state.with_admin_token(""));
    for (method, uri, body) in protected_requests() {
        for token in [None, Some(""), Some(TOKEN)] {
            let answer = send(&admin.app, request(method.clone(), uri, token, body)).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        }
    }
    assert!(admin.compliance.view().overrides().devices.is_empty());
}

#[tokio::test]
async fn device_lookup_shows_the_record_the_decision_and_the_overrides() {
    let admin = admin();
    let answer = get(&admin.app, "/policy/device/w1").await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["device_id"], "W1");
    assert_eq!(body["device"]["enrollment"], "enterprise_wiped");
    assert_eq!(
        body["decision"],
        json!({"state": "blocked", "reason": "enterprise-wiped"})
    );
    assert_eq!(body["device_override"], Value::Null);
    assert_eq!(body["user_override"], Value::Null);
    assert!(body.get("error").is_none());

    admin.compliance.set_user_override(
        "bob@test.local",
        Some(compliance_policy::policy::Override::Allow),
    );
    let body = get(&admin.app, "/policy/device/W1").await.json();
    assert_eq!(body["user_override"], "allow");
    assert_eq!(
        body["decision"],
        json!({"state": "allowed", "reason": "user-override"})
    );
}

#[tokio::test]
async fn unknown_device_lookup_is_404_with_the_decision_an_unknown_device_gets() {
    let admin = admin();
    let answer = get(&admin.app, "/policy/device/NOPE").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let body = answer.json();
    assert!(body["error"].is_string());
    assert_eq!(body["device"], Value::Null);
    assert_eq!(
        body["decision"],
        json!({"state": "blocked", "reason": "unknown-device"})
    );

    admin
        .compliance
        .set_device_override("NOPE", Some(compliance_policy::policy::Override::Allow));
    let answer = get(&admin.app, "/policy/device/nope").await;
    assert_eq!(answer.status, StatusCode::OK, "an override makes it known");
    assert_eq!(answer.json()["device_override"], "allow");
}

#[tokio::test]
async fn account_lookup_lists_the_users_devices_by_upn_or_email() {
    let admin = admin();
    let by_upn = get(&admin.app, "/policy/account/Alice@Test.Local").await;
    assert_eq!(by_upn.status, StatusCode::OK);
    let body = by_upn.json();
    let ids: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"]["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["A1", "A2"]);
    assert_eq!(body["devices"][0]["decision"]["state"], "allowed");
    assert_eq!(body["user_override"], Value::Null);

    admin.compliance.set_user_override(
        "alice@test.local",
        Some(compliance_policy::policy::Override::Block),
    );
    let by_email = get(&admin.app, "/policy/account/alice%40corp.example").await;
    assert_eq!(by_email.status, StatusCode::OK);
    let body = by_email.json();
    assert_eq!(body["devices"].as_array().unwrap().len(), 2);
    assert_eq!(body["user_override"], "block");
    assert_eq!(
        body["devices"][1]["decision"],
        json!({"state": "blocked", "reason": "user-override"})
    );

    let nobody = get(&admin.app, "/policy/account/nobody@test.local").await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
    assert_eq!(nobody.json()["devices"], json!([]));
}

fn listed_ids(answer: &Answer) -> Vec<String> {
    answer.json()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"]["device_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn device_type_and_mail_client_lookups_ignore_case() {
    let admin = admin();
    let iphones = get(&admin.app, "/policy/easdevicetype/IPHONE").await;
    assert_eq!(iphones.status, StatusCode::OK);
    assert_eq!(listed_ids(&iphones), ["A1", "B1", "W1"]);
    assert_eq!(iphones.json()["total"], 3);
    let wiped = &iphones.json()["devices"][2];
    assert_eq!(wiped["decision"]["reason"], "enterprise-wiped");

    let outlook = get(&admin.app, "/policy/mailclient/outlook").await;
    assert_eq!(listed_ids(&outlook), ["A2", "W1"]);
    let none = get(&admin.app, "/policy/mailclient/Nine").await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.json()["total"], 0);
}

#[tokio::test]
async fn devices_are_listed_by_decision() {
    let admin = admin();
    let blocked = get(&admin.app, "/devices?state=blocked").await;
    assert_eq!(blocked.status, StatusCode::OK);
    assert_eq!(listed_ids(&blocked), ["W1"]);
    let allowed = get(&admin.app, "/devices?state=allowed").await;
    assert_eq!(listed_ids(&allowed), ["A1", "A2", "B1"]);
    let all = get(&admin.app, "/devices").await;
    assert_eq!(all.json()["total"], 4);
    let bad = get(&admin.app, "/devices?state=maybe").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["error"].is_string());
}

#[tokio::test]
async fn pages_are_bounded_ordered_and_checked() {
    let admin = admin();
    let page = get(&admin.app, "/devices?limit=2&offset=1").await;
    let body = page.json();
    assert_eq!(
        (
            body["total"].clone(),
            body["limit"].clone(),
            body["offset"].clone()
        ),
        (json!(4), json!(2), json!(1))
    );
    assert_eq!(listed_ids(&page), ["A2", "B1"]);
    let last = get(&admin.app, "/devices?limit=2&offset=3").await;
    assert_eq!(listed_ids(&last), ["W1"]);
    let past = get(&admin.app, "/devices?offset=99").await;
    assert_eq!(past.status, StatusCode::OK);
    assert!(listed_ids(&past).is_empty());
    let huge = get(&admin.app, "/policy/easdevicetype/iphone?limit=1000000").await;
    assert_eq!(huge.json()["limit"], MAX_PAGE_LIMIT);
    let default = get(&admin.app, "/devices").await;
    assert_eq!(default.json()["limit"], 100);
    for bad in [
        "/devices?limit=0",
        "/devices?limit=-1",
        "/devices?offset=x",
        "/devices?colour=red",
        "/policy/mailclient/boxer?state=blocked",
    ] {
        let answer = get(&admin.app, bad).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(answer.json()["error"].is_string());
    }
}

#[tokio::test]
async fn a_device_override_changes_the_decision_and_clearing_it_restores_it() {
    let admin = admin();
    let set = send(
        &admin.app,
        request(
            Method::PUT,
            "/overrides/device/w1",
            Some(TOKEN),
            r#"{"action":"allow"}"#,
        ),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK);
    let body = set.json();
    assert_eq!(body["device_id"], "W1");
    assert_eq!(body["override"], "allow");
    assert_eq!(
        body["decision"],
        json!({"state": "allowed", "reason": "device-override"})
    );
    assert_eq!(body["transitions"].as_array().unwrap().len(), 1);
    assert_eq!(body["transitions"][0]["device_id"], "W1");
    assert_eq!(
        body["transitions"][0]["before"]["reason"],
        "enterprise-wiped"
    );
    assert_eq!(body["transitions"][0]["source"], "override");
    assert!(admin.compliance.decide(Some("W1"), None).is_allowed());

    let cleared = send(
        &admin.app,
        request(Method::DELETE, "/overrides/device/W1", Some(TOKEN), ""),
    )
    .await;
    assert_eq!(cleared.status, StatusCode::OK);
    let body = cleared.json();
    assert_eq!(body["override"], Value::Null);
    assert_eq!(body["decision"]["reason"], "enterprise-wiped");
    assert_eq!(body["transitions"].as_array().unwrap().len(), 1);
    assert_eq!(
        admin.compliance.decide(Some("W1"), None).reason(),
        "enterprise-wiped"
    );

    let again = send(
        &admin.app,
        request(Method::DELETE, "/overrides/device/W1", Some(TOKEN), ""),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["transitions"], json!([]));
}

#[tokio::test]
async fn a_user_override_moves_every_device_of_the_user() {
    let admin = admin();
    let set = send(
        &admin.app,
        request(
            Method::PUT,
            "/overrides/user/Alice@Test.Local",
            Some(TOKEN),
            r#"{"action":"block"}"#,
        ),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK);
    let body = set.json();
    assert_eq!(body["user"], "alice@test.local");
    assert_eq!(body["override"], "block");
    assert_eq!(body["transitions"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["devices"],
        json!([
            {"device_id": "A1", "decision": {"state": "blocked", "reason": "user-override"}},
            {"device_id": "A2", "decision": {"state": "blocked", "reason": "user-override"}},
        ])
    );
    assert!(!admin.compliance.decide(Some("A1"), None).is_allowed());
    assert!(admin.compliance.decide(Some("B1"), None).is_allowed());

    let cleared = send(
        &admin.app,
        request(
            Method::DELETE,
            "/overrides/user/alice@test.local",
            Some(TOKEN),
            "",
        ),
    )
    .await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert_eq!(cleared.json()["transitions"].as_array().unwrap().len(), 2);
    assert!(admin.compliance.decide(Some("A1"), None).is_allowed());
}

#[tokio::test]
async fn a_bad_override_body_is_400_and_changes_nothing() {
    let admin = admin();
    for body in [
        "",
        "allow",
        r#"{"action":"maybe"}"#,
        r#"{"action":"allow","extra":1}"#,
        r#"{"acton":"allow"}"#,
    ] {
        let answer = send(
            &admin.app,
            request(Method::PUT, "/overrides/device/W1", Some(TOKEN), body),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert!(answer.json()["error"].is_string());
    }
    let huge = format!(r#"{{"action":"allow","pad":"{}"}}"#, "x".repeat(10_000));
    let answer = send(
        &admin.app,
        request(
            Method::PUT,
            "/overrides/user/bob@test.local",
            Some(TOKEN),
            &huge,
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    let view = admin.compliance.view();
    assert!(view.overrides().devices.is_empty() && view.overrides().users.is_empty());
}

#[tokio::test]
async fn sync_status_is_reported_and_a_full_sync_can_be_requested() {
    let admin = admin();
    let status = get(&admin.app, "/sync").await;
    assert_eq!(status.status, StatusCode::OK);
    let body = status.json();
    assert_eq!(body["configured"], true);
    assert_eq!(body["loaded"], true);
    assert_eq!(body["devices"], 4);
    assert_eq!(body["successes"], 0);
    assert_eq!(body["last_full_sync"], Value::Null);
    let synced_at = body["view_synced_at"].as_str().unwrap();
    assert!(
        synced_at.ends_with('Z') && synced_at.contains('T'),
        "{synced_at}"
    );

    let trigger = send(&admin.app, request(Method::POST, "/sync", Some(TOKEN), "")).await;
    assert_eq!(trigger.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_full_sync_request_without_a_syncer_is_503() {
    let admin = admin_with(|state| state.with_admin_token(TOKEN));
    let trigger = send(&admin.app, request(Method::POST, "/sync", Some(TOKEN), "")).await;
    assert_eq!(trigger.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(trigger.json()["error"].is_string());
    assert_eq!(get(&admin.app, "/sync").await.json()["configured"], false);
}

#[tokio::test]
async fn an_event_without_the_right_secret_is_401_and_never_parsed() {
    let admin = admin();
    for secret in [None, Some("wrong"), Some("hook-s3cre"), Some("")] {
        let answer = send(&admin.app, event(secret, None, wipe_event("A1"))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{secret:?}");
        assert!(answer.json()["error"].is_string());
        assert!(!answer.headers.contains_key("www-authenticate"));
    }
    assert_eq!(admin.parsed.load(Ordering::SeqCst), 0);
    assert!(admin.compliance.decide(Some("A1"), None).is_allowed());
}

#[tokio::test]
async fn without_a_configured_secret_every_event_is_refused() {
    let admin = admin_with(|state| state.with_admin_token(TOKEN));
    let answer = send(&admin.app, event(Some(SECRET), None, wipe_event("A1"))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(admin.parsed.load(Ordering::SeqCst), 0);
    assert!(admin.compliance.decide(Some("A1"), None).is_allowed());
}

#[tokio::test]
async fn an_event_with_a_wrong_signature_is_401_and_never_parsed() {
    let admin = admin();
    let body = wipe_event("A1");
    for signature in [
        sign("other-key", body.as_bytes()),
        sign(SECRET, b"another body"),
        "sha256=nothex".to_string(),
        "md5=abc".to_string(),
    ] {
        let answer = send(
            &admin.app,
            event(Some(SECRET), Some(signature.clone()), body.clone()),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{signature}");
    }
    assert_eq!(admin.parsed.load(Ordering::SeqCst), 0);
    assert!(admin.compliance.decide(Some("A1"), None).is_allowed());
}

#[tokio::test]
async fn a_signed_event_with_the_right_signature_is_applied() {
    let admin = admin();
    let body = wipe_event("A1");
    let signature = sign(SECRET, body.as_bytes())
        .to_uppercase()
        .replace("SHA256=", "sha256=");
    let answer = send(&admin.app, event(Some(SECRET), Some(signature), body)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        admin.compliance.decide(Some("A1"), None).reason(),
        "enterprise-wiped"
    );
}

#[tokio::test]
async fn a_malformed_event_is_400_and_leaves_the_view_unchanged() {
    let admin = admin();
    let before = admin.compliance.view();
    let answer = send(&admin.app, event(Some(SECRET), None, "{not json")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed change event")
    );
    assert_eq!(admin.parsed.load(Ordering::SeqCst), 1);
    assert!(
        Arc::ptr_eq(&before, &admin.compliance.view()),
        "no new view was swapped in"
    );
}

#[tokio::test]
async fn a_good_event_is_applied_and_its_transitions_returned() {
    let admin = admin();
    let mut transitions = admin.compliance.subscribe();
    let answer = send(&admin.app, event(Some(SECRET), None, wipe_event("a1"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["changes"], 1);
    assert_eq!(body["transitions"].as_array().unwrap().len(), 1);
    assert_eq!(body["transitions"][0]["device_id"], "A1");
    assert_eq!(
        body["transitions"][0]["after"],
        json!({"state": "blocked", "reason": "enterprise-wiped"})
    );
    assert_eq!(body["transitions"][0]["source"], "change-event");
    assert_eq!(
        transitions.try_recv().unwrap().device_id,
        DeviceId::new("A1")
    );
    assert_eq!(
        admin.compliance.decide(Some("A1"), None).reason(),
        "enterprise-wiped"
    );
}

#[tokio::test]
async fn an_oversize_event_is_413_and_never_parsed() {
    let admin = admin();
    let big = vec![b' '; MAX_EVENT_BODY + 1];
    // Read up to the cap (no Content-Length)…
    let answer = send(&admin.app, event(Some(SECRET), None, big.clone())).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // …or refused on the declared length before reading.
    let mut declared = event(Some(SECRET), None, Body::empty());
    declared
        .headers_mut()
        .insert("content-length", (MAX_EVENT_BODY + 1).into());
    let answer = send(&admin.app, declared).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.json()["error"].is_string());
    assert_eq!(admin.parsed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json_errors() {
    let admin = admin();
    let missing = get(&admin.app, "/nothing-here").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].is_string());
    let wrong_method = send(
        &admin.app,
        request(Method::GET, "/events/compliance", None, ""),
    )
    .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong_method.json()["error"].is_string());
}

#[tokio::test]
async fn metrics_are_open_and_count_a_blocked_request() {
    use compliance_policy::enforce::ComplianceLayer;
    use compliance_policy::metrics::ComplianceMetrics;
    use prometheus_client::registry::Registry;
    use tower::Layer;

    let metrics = ComplianceMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let compliance = Compliance::with_metrics(PolicySettings::default(), metrics);
    compliance.replace_all(devices(), ChangeSource::FullSync);
    let app = router(
        AdminState::new(compliance.clone(), |_: &[u8]| Ok(vec![]))
            .with_admin_token(TOKEN)
            .with_registry(Arc::new(registry)),
    );
    // W1 is enterprise-wiped: its request is refused by the enforcement layer.
    let exchange = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
    });
    let wiped = Request::post("/EWS/Exchange.asmx")
        .header("x-device-id", "W1")
        .body(Body::empty())
        .unwrap();
    let refused = ComplianceLayer::new(compliance)
        .layer(exchange)
        .oneshot(wiped)
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let answer = send(&app, request(Method::GET, "/metrics", None, "")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = String::from_utf8(answer.body).unwrap();
    for line in [
        r#"seg_compliance_decisions_total{result="blocked",reason="enterprise-wiped"} 1"#,
        r#"seg_compliance_decisions_total{result="allowed",reason="compliant"} 0"#,
        "seg_compliance_view_devices 4",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn override_changes_reach_the_audit_hook_with_operator_and_reason() {
    use compliance_policy::admin::{OverrideChange, OverrideTarget};
    use compliance_policy::policy::Override;
    use std::sync::Mutex;
    let told: Arc<Mutex<Vec<OverrideChange>>> = Arc::default();
    let hook = told.clone();
    let admin = admin_with(|state| {
        state
            .with_admin_token(TOKEN)
            .with_audit(move |change| hook.lock().unwrap().push(change.clone()))
    });
    let set = request(
        Method::PUT,
        "/overrides/device/lab1",
        Some(TOKEN),
        r#"{"action":"allow","reason":" lab phone, ticket 7 "}"#,
    );
    assert_eq!(send(&admin.app, set).await.status, StatusCode::OK);
    let clear = request(
        Method::DELETE,
        "/overrides/user/Alice@Test.Local",
        Some(TOKEN),
        r#"{"reason":"back from leave"}"#,
    );
    assert_eq!(send(&admin.app, clear).await.status, StatusCode::OK);
    let bare = request(Method::DELETE, "/overrides/device/LAB1", Some(TOKEN), "");
    assert_eq!(send(&admin.app, bare).await.status, StatusCode::OK);
    let bad = request(
        Method::PUT,
        "/overrides/device/LAB2",
        Some(TOKEN),
        r#"{"action":"block","reason":"two\nlines"}"#,
    );
    assert_eq!(send(&admin.app, bad).await.status, StatusCode::BAD_REQUEST);

    let told = told.lock().unwrap();
    let summary: Vec<(String, OverrideTarget, Option<Override>, Option<String>)> = told
        .iter()
        .map(|c| {
            (
                c.operator.name().to_owned(),
                c.target.clone(),
                c.action,
                c.reason.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "admin-token".to_owned(),
                OverrideTarget::Device(DeviceId::new("LAB1")),
                Some(Override::Allow),
                Some("lab phone, ticket 7".to_owned())
            ),
            (
                "admin-token".to_owned(),
                OverrideTarget::User("alice@test.local".into()),
                None,
                Some("back from leave".to_owned())
            ),
            (
                "admin-token".to_owned(),
                OverrideTarget::Device(DeviceId::new("LAB1")),
                None,
                None
            ),
        ]
    );
    assert!(
        !admin.compliance.decide(Some("LAB2"), None).is_allowed(),
        "a refused override changes nothing"
    );
}

#[tokio::test]
async fn protect_puts_other_routes_behind_the_admin_token() {
    let compliance = Compliance::new(PolicySettings::default());
    let state = AdminState::new(compliance, |_: &[u8]| Err("no events".to_string()))
        .with_admin_token(TOKEN);
    let extra =
        state.protect(
            Router::new().route(
                "/extra",
                axum::routing::get(
                    |axum::Extension(operator): axum::Extension<
                        compliance_policy::admin::Operator,
                    >| async move { operator.name().to_owned() },
                ),
            ),
        );
    let refused = send(&extra, request(Method::GET, "/extra", None, "")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    let wrong = send(&extra, request(Method::GET, "/extra", Some("nope"), "")).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let allowed = send(&extra, request(Method::GET, "/extra", Some(TOKEN), "")).await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(allowed.body, b"admin-token");
}
