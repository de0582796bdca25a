//! The console's router, request by request, over an in-memory compliance state.

use super::*;
use axum::body::Body;
use compliance_policy::device::{DeviceId, DeviceRecord, Enrollment};
use compliance_policy::policy::PolicySettings;
use compliance_policy::state::ChangeSource;
use http::{Request, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

const ADMIN: &str = "an-admin-token-of-16+";
const CAROL: &str = "carols-own-token-0001";

fn record(id: &str, user: &str, model: &str) -> DeviceRecord {
    DeviceRecord {
        device_id: DeviceId::new(id),
        user: Some(user.into()),
        model: Some(model.into()),
        platform: Some("iOS".into()),
        enrollment: Enrollment::Enrolled,
        compliance: compliance_policy::device::ComplianceStatus::Compliant,
        managed: true,
        ..DeviceRecord::default()
    }
}

fn app(records: Vec<DeviceRecord>) -> (Compliance, Router) {
    let compliance = Compliance::new(PolicySettings::default());
    compliance.replace_all(records, ChangeSource::FullSync);
    let settings = ConsoleSettings::new("9.9.9")
        .with_admin_token(ADMIN)
        .with_operator("carol", CAROL);
    let router = Console::new(compliance.clone(), settings).router();
    (compliance, router)
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// `token=<token>`, encoded as a browser encodes it.
fn token_form(token: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish()
}

fn form(uri: &str, cookie: Option<&str>, body: &str) -> Request<Body> {
    let mut request =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

fn get(uri: &str, cookie: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

/// Signs in with `token`: the cookie (`name=value`) and the CSRF token of the overview's form.
async fn sign_in(app: &Router, token: &str) -> (String, String) {
    let (status, headers, _) = send(app, form("/ui/login", None, &token_form(token))).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let (status, _, page) = send(app, get("/ui/", &cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_owned();
    (cookie, csrf)
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_strict_and_secure_only_when_asked() {
    let (_, app) = app(vec![]);
    let (_, headers, _) = send(&app, form("/ui/login", None, &token_form(ADMIN))).await;
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("seg_console="), "{cookie}");
    assert!(cookie.contains("; HttpOnly") && cookie.contains("; SameSite=Strict"));
    assert!(cookie.contains("; Max-Age=28800"), "{cookie}");
    assert!(!cookie.contains("Secure"));

    let compliance = Compliance::new(PolicySettings::default());
    let secure = Console::new(
        compliance,
        ConsoleSettings::new("1")
            .with_admin_token(ADMIN)
            .secure_cookies(true),
    )
    .router();
    let (_, headers, _) = send(&secure, form("/ui/login", None, &token_form(ADMIN))).await;
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );
}

#[tokio::test]
async fn a_wrong_token_is_refused_without_a_cookie() {
    let (_, app) = app(vec![]);
    let (status, headers, page) =
        send(&app, form("/ui/login", None, "token=not-a-token-at-all")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert!(page.contains("not valid"));
}

#[tokio::test]
async fn pages_without_a_session_send_to_the_sign_in_page() {
    let (_, app) = app(vec![]);
    for uri in [
        "/ui/",
        "/ui/devices",
        "/ui/devices/X",
        "/ui/audit",
        "/ui/events",
    ] {
        let (status, headers, _) = send(&app, get(uri, "seg_console=forged")).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{uri}");
        assert_eq!(headers[header::LOCATION], "/ui/login", "{uri}");
    }
    let (status, _, page) =
        send(&app, Request::get("/ui/login").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"name="token" type="password""#));
}

#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused_and_changes_nothing() {
    let (compliance, app) = app(vec![record("DEV1", "alice@test.local", "iPhone")]);
    let (cookie, csrf) = sign_in(&app, CAROL).await;
    let (status, _, _) = send(
        &app,
        form("/ui/devices/DEV1/override", Some(&cookie), "action=block"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let wrong = format!("action=block&csrf={}", "0".repeat(csrf.len()));
    let (status, _, _) = send(
        &app,
        form("/ui/devices/DEV1/override", Some(&cookie), &wrong),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(compliance.decide(Some("DEV1"), None).is_allowed());
    let (status, _, _) = send(&app, form("/ui/logout", Some(&cookie), "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_override_by_form_changes_the_decision() {
    let (compliance, app) = app(vec![record("DEV1", "alice@test.local", "iPhone")]);
    let (cookie, csrf) = sign_in(&app, CAROL).await;
    let body = format!("csrf={csrf}&action=block&reason=lost+phone");
    let (status, headers, _) = send(
        &app,
        form("/ui/devices/dev1/override", Some(&cookie), &body),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/ui/devices/DEV1");
    assert!(!compliance.decide(Some("DEV1"), None).is_allowed());
    let (_, _, page) = send(&app, get("/ui/devices/DEV1", &cookie)).await;
    assert!(
        page.contains(r#"<strong data-live="state" class="blocked">blocked</strong>"#),
        "{page}"
    );
    assert!(page.contains("device-override"));
}

#[tokio::test]
async fn sign_out_closes_the_session() {
    let (_, app) = app(vec![]);
    let (cookie, csrf) = sign_in(&app, ADMIN).await;
    let (status, headers, _) = send(
        &app,
        form("/ui/logout", Some(&cookie), &format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _, _) = send(&app, get("/ui/", &cookie)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn device_fields_are_escaped() {
    let hostile = "<script>alert(1)</script>";
    let (_, app) = app(vec![record("DEV1", "alice@test.local", hostile)]);
    let (cookie, _) = sign_in(&app, ADMIN).await;
    for uri in ["/ui/devices/DEV1", "/ui/devices?q=script"] {
        let (status, _, page) = send(&app, get(uri, &cookie)).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(!page.contains(hostile), "{uri}: {page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn the_device_list_searches_filters_and_pages() {
    let mut records: Vec<_> = (0..60)
        .map(|n| record(&format!("DEV{n:02}"), "bob@test.local", "Pixel"))
        .collect();
    records.push(record("ZED", "alice@test.local", "iPhone"));
    let mut wiped = record("WIPED", "alice@test.local", "iPhone");
    wiped.enrollment = Enrollment::EnterpriseWiped;
    records.push(wiped);
    let (_, app) = app(records);
    let (cookie, _) = sign_in(&app, ADMIN).await;

    let (_, _, page) = send(&app, get("/ui/devices?q=ALICE", &cookie)).await;
    assert!(page.contains("2 devices;"), "{page}");
    assert!(page.contains(">ZED<") && page.contains(">WIPED<"));
    let (_, _, page) = send(&app, get("/ui/devices?q=alice&filter=blocked", &cookie)).await;
    assert!(page.contains("1 devices;") && page.contains(">WIPED<") && !page.contains(">ZED<"));
    let (_, _, page) = send(&app, get("/ui/devices?q=pixel&page=2", &cookie)).await;
    assert!(page.contains("60 devices; page 2 of 2."), "{page}");
    assert!(page.contains(">DEV59<") && !page.contains(">DEV00<"));
    let (status, _, _) = send(&app, get("/ui/devices?filter=maybe", &cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_overview_counts_blocked_devices_and_names_the_version() {
    let mut wiped = record("WIPED", "alice@test.local", "iPhone");
    wiped.enrollment = Enrollment::EnterpriseWiped;
    let (_, app) = app(vec![record("OK1", "bob@test.local", "Pixel"), wiped]);
    let (cookie, _) = sign_in(&app, ADMIN).await;
    let (_, headers, page) = send(&app, get("/ui/", &cookie)).await;
    assert!(
        page.contains("<dt>Devices in the view</dt><dd>2</dd>"),
        "{page}"
    );
    assert!(page.contains(r#"<a href="/ui/devices?filter=blocked">1</a>"#));
    assert!(page.contains("9.9.9"));
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
}

#[tokio::test]
async fn the_event_stream_sends_decision_changes() {
    let (compliance, app) = app(vec![record("DEV1", "alice@test.local", "iPhone")]);
    let (cookie, _) = sign_in(&app, ADMIN).await;
    let response = app
        .clone()
        .oneshot(get("/ui/events", &cookie))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    compliance.set_device_override("DEV1", Some(compliance_policy::policy::Override::Block));
    let mut body = response.into_body();
    let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
        .await
        .expect("an event within the deadline")
        .unwrap()
        .unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(text.starts_with("event: decision\n"), "{text}");
    assert!(
        text.contains(r#""device":"DEV1""#) && text.contains(r#""state":"blocked""#),
        "{text}"
    );
    assert!(text.contains(r#""reason":"device-override""#), "{text}");
}

#[tokio::test]
async fn assets_are_served_from_the_binary() {
    let (_, app) = app(vec![]);
    let (status, headers, css) = send(
        &app,
        Request::get("/ui/assets/console.css")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    assert!(css.contains("@media"));
    let (_, _, js) = send(
        &app,
        Request::get("/ui/assets/console.js")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(js.contains("EventSource(\"/ui/events\")"));
}

#[tokio::test]
async fn the_event_stream_ends_with_its_session() {
    let (compliance, app) = app(vec![record("DEV1", "alice@test.local", "iPhone")]);
    let (cookie, csrf) = sign_in(&app, ADMIN).await;
    let response = app
        .clone()
        .oneshot(get("/ui/events", &cookie))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _, _) = send(
        &app,
        form("/ui/logout", Some(&cookie), &format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    compliance.set_device_override("DEV1", Some(compliance_policy::policy::Override::Block));
    let mut body = response.into_body();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
        .await
        .expect("the stream ends within the deadline");
    assert!(end.is_none(), "no event after sign-out: {end:?}");
}

#[tokio::test]
async fn the_configuration_page_shows_the_given_text_escaped() {
    let compliance = Compliance::new(PolicySettings::default());
    let settings = ConsoleSettings::new("9.9.9").with_admin_token(ADMIN);
    let text = "[admin]\ntoken = \"<redacted>\"\nbanner = \"<script>alert(1)</script> & co\"\n";
    let app = Console::new(compliance, settings)
        .with_configuration(text)
        .router();
    let (cookie, _) = sign_in(&app, ADMIN).await;
    let (status, _, page) = send(&app, get("/ui/config", &cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(
            "[admin]\ntoken = &quot;&lt;redacted&gt;&quot;\nbanner = \
             &quot;&lt;script&gt;alert(1)&lt;/script&gt; &amp; co&quot;\n"
        ),
        "{page}"
    );
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains(r#"<a href="/ui/config">Configuration</a>"#));
}

#[tokio::test]
async fn the_configuration_page_is_closed_without_a_session_and_says_when_none_was_given() {
    let (_, app) = app(vec![]);
    let response = app
        .clone()
        .oneshot(Request::get("/ui/config").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/ui/login");
    let (cookie, _) = sign_in(&app, ADMIN).await;
    let (status, _, page) = send(&app, get("/ui/config", &cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("gave the console no configuration"), "{page}");
}
