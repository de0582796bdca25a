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

/// `csrf=<csrf>&token=<token>`, encoded as a browser encodes it.
fn token_form(csrf: &str, token: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("csrf", csrf)
        .append_pair("token", token)
        .finish()
}

/// The `name=value` of the `Set-Cookie` for `name`.
fn set_cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap())
        .find(|value| value.starts_with(&format!("{name}=")))
        .map(|value| value.split(';').next().unwrap().to_owned())
}

/// The value of the first hidden `csrf` field of `page`.
fn csrf_field(page: &str) -> String {
    page.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_owned()
}

/// Opens the sign-in page as a browser does: its cookie (`name=value`) and its form's CSRF field.
async fn sign_in_page(app: &Router) -> (String, String) {
    let (status, headers, page) =
        send(app, Request::get("/ui/login").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = set_cookie(&headers, SIGN_IN_COOKIE).expect("a sign-in cookie");
    (cookie, csrf_field(&page))
}

/// The sign-in form posted with `token`, as the browser that opened the sign-in page sends it.
async fn login_request(app: &Router, token: &str) -> Request<Body> {
    let (cookie, csrf) = sign_in_page(app).await;
    form("/ui/login", Some(&cookie), &token_form(&csrf, token))
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
    let (status, headers, _) = send(app, login_request(app, token).await).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = set_cookie(&headers, SESSION_COOKIE).expect("a session cookie");
    let (status, _, page) = send(app, get("/ui/", &cookie)).await;
    assert_eq!(status, StatusCode::OK);
    (cookie, csrf_field(&page))
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_strict_and_secure_only_when_asked() {
    let (_, app) = app(vec![]);
    let (_, headers, _) = send(&app, login_request(&app, ADMIN).await).await;
    let cookie = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap())
        .find(|value| value.starts_with("seg_console="))
        .unwrap();
    assert!(cookie.contains("; Path=/ui;"), "{cookie}");
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
    let (_, headers, _) = send(&secure, login_request(&secure, ADMIN).await).await;
    let cookies: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
    assert_eq!(
        cookies.len(),
        2,
        "the session's, and the used form's cleared"
    );
    assert!(
        cookies
            .iter()
            .all(|cookie| cookie.to_str().unwrap().ends_with("; Secure"))
    );
}

#[tokio::test]
async fn the_sign_in_form_sets_a_strict_cookie_only_for_itself() {
    let (_, app) = app(vec![]);
    let (_, headers, page) =
        send(&app, Request::get("/ui/login").body(Body::empty()).unwrap()).await;
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("seg_console_sign_in="), "{cookie}");
    assert!(
        cookie.ends_with("; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=43200"),
        "{cookie}"
    );
    assert!(page.contains(r#"<input type="hidden" name="csrf" value=""#));
    // A second sign-in page in the same browser keeps its cookie, so both forms stay valid.
    let held = set_cookie(&headers, SIGN_IN_COOKIE).unwrap();
    let (_, again, second) = send(
        &app,
        Request::get("/ui/login")
            .header(header::COOKIE, &held)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(again.get(header::SET_COOKIE).is_none());
    assert_eq!(csrf_field(&second), csrf_field(&page));
}

#[tokio::test]
async fn a_cross_site_sign_in_without_the_forms_csrf_token_is_refused() {
    let console = Console::new(
        Compliance::new(PolicySettings::default()),
        ConsoleSettings::new("1").with_admin_token(ADMIN),
    );
    let app = console.clone().router();
    let (cookie, csrf) = sign_in_page(&app).await;
    let (other_cookie, _) = sign_in_page(&app).await;
    let right_token = token_form("", ADMIN);
    for (what, cookie, body) in [
        // Another site's form: the browser sends no SameSite=Strict cookie, and the site
        // cannot know the field.
        ("no cookie, no field", None, format!("token={ADMIN}")),
        ("no cookie", None, token_form(&csrf, ADMIN)),
        ("no field", Some(cookie.as_str()), right_token),
        (
            "another form's cookie",
            Some(other_cookie.as_str()),
            token_form(&csrf, ADMIN),
        ),
        ("the cookie as the field", Some(cookie.as_str()), {
            let value = cookie.split_once('=').unwrap().1;
            token_form(value, ADMIN)
        }),
    ] {
        let (status, headers, page) = send(&app, form("/ui/login", cookie, &body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        assert!(set_cookie(&headers, SESSION_COOKIE).is_none(), "{what}");
        assert!(
            page.contains("not issued to this browser"),
            "{what}: {page}"
        );
        assert!(
            page.contains(r#"name="csrf""#),
            "{what}: a new form to sign in with"
        );
    }
    assert!(console.sessions().is_empty(), "no session opened");
}

#[tokio::test]
async fn a_wrong_token_is_refused_without_a_cookie() {
    let (_, app) = app(vec![]);
    let (status, headers, page) = send(&app, login_request(&app, "not-a-token-at-all").await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&headers, SESSION_COOKIE).is_none());
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
        "/ui/users/alice%40test.local",
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
async fn a_device_page_lists_its_recent_requests_by_operation() {
    use compliance_policy::policy::{AllowReason, BlockReason, Decision};
    let (compliance, app) = app(vec![record("DEV1", "alice@test.local", "iPhone")]);
    let recent = compliance.recent_requests();
    recent.record("DEV1", "GetFolder", Decision::Allow(AllowReason::Compliant));
    recent.record("OTHER", "GetItem", Decision::Allow(AllowReason::Compliant));
    recent.record(
        "dev1",
        "Subscribe",
        Decision::Block(BlockReason::EnterpriseWiped),
    );
    let (cookie, _) = sign_in(&app, CAROL).await;
    let (_, _, page) = send(&app, get("/ui/devices/DEV1", &cookie)).await;
    let listed = |operation: &str| page.find(&format!("<td>{operation}</td>"));
    let (subscribe, get_folder) = (listed("Subscribe"), listed("GetFolder"));
    assert!(subscribe.is_some() && get_folder.is_some(), "{page}");
    assert!(subscribe < get_folder, "newest first");
    assert!(listed("GetItem").is_none(), "another device's request");
    assert!(page.contains("enterprise-wiped"));
    assert!(page.contains(r#"<td class="count">1</td>"#), "{page}");
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

#[tokio::test]
async fn a_user_override_by_form_needs_its_csrf_token_and_covers_every_device_of_the_user() {
    let (compliance, app) = app(vec![
        record("A1", "alice@test.local", "iPhone"),
        record("A2", "alice@test.local", "Pixel"),
        record("B1", "bob@test.local", "Pixel"),
    ]);
    let (cookie, csrf) = sign_in(&app, CAROL).await;
    let (status, _, page) = send(&app, get("/ui/users/Alice%40test.local", &cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(r#"<form method="post" action="/ui/users/alice%40test.local/override">"#),
        "{page}"
    );
    assert!(page.contains(">A1<") && page.contains(">A2<") && !page.contains(">B1<"));

    let path = "/ui/users/ALICE%40test.local/override";
    let (status, _, _) = send(&app, form(path, Some(&cookie), "action=block")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(compliance.decide(Some("A1"), None).is_allowed());

    let body = format!("csrf={csrf}&action=block&reason=left+the+company");
    let (status, headers, _) = send(&app, form(path, Some(&cookie), &body)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/ui/users/alice%40test.local");
    for device in ["A1", "A2"] {
        assert_eq!(
            compliance.decide(Some(device), None).reason(),
            "user-override",
            "{device}"
        );
    }
    assert!(compliance.decide(Some("B1"), None).is_allowed());
    let (_, _, page) = send(&app, get("/ui/users/alice%40test.local", &cookie)).await;
    assert!(
        page.contains("User override: <strong>block</strong>"),
        "{page}"
    );
    let (_, _, page) = send(&app, get("/ui/devices/A1", &cookie)).await;
    assert!(page.contains("user override: block"), "{page}");
    assert!(
        page.contains(r#"<a href="/ui/users/alice%40test.local">"#),
        "{page}"
    );

    let body = format!("csrf={csrf}&action=clear");
    let (status, _, _) = send(&app, form(path, Some(&cookie), &body)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(compliance.decide(Some("A1"), None).is_allowed());
    let body = format!("csrf={csrf}&action=maybe");
    let (status, _, _) = send(&app, form(path, Some(&cookie), &body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_unknown_user_without_an_override_is_not_found_but_can_be_blocked() {
    let (compliance, app) = app(vec![]);
    let (cookie, csrf) = sign_in(&app, ADMIN).await;
    let (status, _, page) = send(&app, get("/ui/users/nobody%40test.local", &cookie)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("lists no device of this user"), "{page}");
    let body = format!("csrf={csrf}&action=block");
    let (status, _, _) = send(
        &app,
        form(
            "/ui/users/nobody%40test.local/override",
            Some(&cookie),
            &body,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        compliance.decide(None, Some("nobody@test.local")).reason(),
        "user-override"
    );
    let (status, _, _) = send(&app, get("/ui/users/nobody%40test.local", &cookie)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn the_overview_shows_decisions_per_second_and_reachability() {
    use crate::health::{Reachability, probe};
    use compliance_policy::enforce::ComplianceLayer;
    use compliance_policy::metrics::ComplianceMetrics;
    use tower::Service;

    let compliance = Compliance::with_metrics(PolicySettings::default(), ComplianceMetrics::new());
    compliance.replace_all(
        vec![record("DEV1", "alice@test.local", "iPhone")],
        ChangeSource::FullSync,
    );
    let app = Console::new(
        compliance.clone(),
        ConsoleSettings::new("1").with_admin_token(ADMIN),
    )
    .with_reachability(
        "Redis",
        probe(|| async { Reachability::Reachable("answered the last command".into()) }),
    )
    .with_reachability(
        "KDC",
        probe(|| async { Reachability::Unreachable("kdc.test:88: connection refused".into()) }),
    )
    .router();
    let (cookie, _) = sign_in(&app, ADMIN).await;
    let (_, _, page) = send(&app, get("/ui/", &cookie)).await;
    assert!(
        page.contains(r#"<dd id="decisions-per-second">measuring…</dd>"#),
        "{page}"
    );

    // 30 requests decided by the enforcement layer within two seconds.
    let mut enforce = tower::ServiceBuilder::new()
        .layer(ComplianceLayer::new(compliance.clone()))
        .service(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        }));
    for _ in 0..30 {
        let request = Request::post("/EWS/Exchange.asmx")
            .header("x-device-id", "DEV1")
            .body(Body::empty())
            .unwrap();
        let response = enforce.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    let (_, _, page) = send(&app, get("/ui/", &cookie)).await;
    assert!(
        page.contains(r#"<dd id="decisions-per-second">15.0 (over the last 10s)</dd>"#),
        "{page}"
    );
    assert!(
        page.contains(
            r#"<dt>Redis</dt><dd data-reachability="Redis"><strong class="allowed">reachable</strong>: answered the last command</dd>"#
        ),
        "{page}"
    );
    assert!(
        page.contains(
            r#"<dt>KDC</dt><dd data-reachability="KDC"><strong class="blocked">unreachable</strong>: kdc.test:88: connection refused</dd>"#
        ),
        "{page}"
    );
}

#[tokio::test]
async fn without_metrics_or_probes_the_overview_says_so() {
    let (_, app) = app(vec![]);
    let (cookie, _) = sign_in(&app, ADMIN).await;
    let (_, _, page) = send(&app, get("/ui/", &cookie)).await;
    assert!(page.contains("not counted"), "{page}");
    assert!(!page.contains("data-reachability"), "{page}");
}

#[tokio::test]
async fn an_exact_device_id_or_user_finds_just_it_with_a_link_to_the_substring_search() {
    let (_, app) = app(vec![
        record("DEV1", "alice@test.local", "iPhone"),
        record("DEV10", "alice@test.local.example", "Pixel"),
        record("DEV2", "bob@test.local", "Pixel"),
    ]);
    let (cookie, _) = sign_in(&app, ADMIN).await;
    let (_, _, page) = send(&app, get("/ui/devices?q=dev1", &cookie)).await;
    assert!(
        page.contains("1 devices;") && page.contains(">DEV1<"),
        "{page}"
    );
    assert!(!page.contains(">DEV10<"), "{page}");
    assert!(
        page.contains(r#"<a href="/ui/devices?q=dev1&amp;match=contains&amp;page=1">"#),
        "{page}"
    );
    let (_, _, page) = send(&app, get("/ui/devices?q=dev1&match=contains", &cookie)).await;
    assert!(
        page.contains("2 devices;") && page.contains(">DEV10<"),
        "{page}"
    );
    assert!(!page.contains(r#"id="exact-match""#), "{page}");
    let (_, _, page) = send(&app, get("/ui/devices?q=ALICE%40test.local", &cookie)).await;
    assert!(page.contains(r#"id="exact-match""#), "{page}");
    assert!(
        page.contains("1 devices;") && page.contains(">DEV1<"),
        "{page}"
    );
    let (status, _, _) = send(&app, get("/ui/devices?q=x&match=fuzzy", &cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
