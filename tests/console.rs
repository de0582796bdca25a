//! The admin console end to end, over real sockets: the test UEM console (its webhook aimed at
//! the gateway) and Exchange, and a gateway with `[compliance]`, `[audit]` and a named operator.
//! Sign-in and sign-out, the CSRF check, an override made on a device's page (recorded with the
//! operator's name), a wipe in UEM reaching the console's event stream, the configuration page
//! without secrets, and (ignored by default) the screenshots in `docs/`.

mod support;

use http::StatusCode;
use seg_proxy::config::AdminOperator;
use seg_testbed::harness::wait_until;
use seg_testbed::uem::{Change, Device};
use support::*;

const DEVICE: &str = "EASDEV1";
const OTHER: &str = "EASDEV2";
const OPERATOR: &str = "carol";
const OPERATOR_TOKEN: &str = "carols-console-token-0001";

/// The compliance stand (tests/support) with the audit trail and a named operator.
type Stand = ComplianceStand;

impl Stand {
    async fn with_console() -> Stand {
        let devices = vec![
            Device::new(DEVICE, 1, "alice@test.local"),
            Device::new(OTHER, 2, "bob@test.local"),
        ];
        ComplianceStand::start(devices, |config, dir| {
            with_audit(config, dir.join("audit.redb"), "seg-console-test");
            config.admin.operators = vec![AdminOperator {
                name: OPERATOR.into(),
                token: OPERATOR_TOKEN.into(),
            }];
        })
        .await
    }

    /// The decision of `device` as the admin API reports it: `(state, reason)`.
    async fn decision(&self, device: &str) -> (String, String) {
        let (status, body) = admin_request(
            &self.gateway,
            http::Method::GET,
            &format!("/policy/device/{device}"),
            Some(ADMIN_TOKEN),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            report["decision"]["state"].as_str().unwrap().to_owned(),
            report["decision"]["reason"].as_str().unwrap().to_owned(),
        )
    }
}

#[tokio::test]
async fn sign_in_opens_the_pages_and_sign_out_closes_them() {
    let stand = Stand::with_console().await;
    let gateway = &stand.gateway;

    let (status, headers, _) = console_request(gateway, "/ui/", None, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/login");
    assert_eq!(
        console_sign_in(gateway, "not-a-token-of-anyone-01").await,
        None
    );

    let cookie = console_sign_in(gateway, OPERATOR_TOKEN)
        .await
        .expect("carol signs in");
    let (status, _, overview) = console_request(gateway, "/ui/", Some(&cookie), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        overview.contains("Signed in as <strong>carol</strong>"),
        "{overview}"
    );
    assert!(
        overview.contains("<dt>Devices in the view</dt><dd>2</dd>"),
        "{overview}"
    );
    let (status, _, page) =
        console_request(gateway, "/ui/devices?q=alice", Some(&cookie), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(DEVICE) && !page.contains(OTHER), "{page}");

    let csrf = console_csrf(&overview);
    let (status, _, _) = console_request(
        gateway,
        "/ui/logout",
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    for path in [
        "/ui/",
        "/ui/devices",
        &format!("/ui/devices/{DEVICE}"),
        "/ui/audit",
        "/ui/config",
    ] {
        let (status, headers, _) = console_request(gateway, path, Some(&cookie), None).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(headers["location"], "/ui/login", "{path}");
    }
}

#[tokio::test]
async fn an_override_by_form_needs_the_csrf_token_and_is_recorded_with_the_operator() {
    let stand = Stand::with_console().await;
    let gateway = &stand.gateway;
    let cookie = console_sign_in(gateway, OPERATOR_TOKEN).await.unwrap();
    let device_page = format!("/ui/devices/{DEVICE}");
    let (status, _, page) = console_request(gateway, &device_page, Some(&cookie), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("alice@test.local"), "{page}");
    let form_path = format!("{device_page}/override");

    // Without the CSRF token: refused, nothing changes.
    let (status, _, _) = console_request(
        gateway,
        &form_path,
        Some(&cookie),
        Some("action=block&reason=lost"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(stand.decision(DEVICE).await.0, "allowed");

    // With it: blocked by the override, recorded with carol as the actor.
    let form = format!(
        "csrf={}&action=block&reason={}",
        console_csrf(&page),
        form_encode("reported stolen")
    );
    let (status, headers, _) =
        console_request(gateway, &form_path, Some(&cookie), Some(&form)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], device_page);
    assert_eq!(
        stand.decision(DEVICE).await,
        ("blocked".to_owned(), "device-override".to_owned())
    );
    let entries = || async {
        let (_, body) = admin_request(
            gateway,
            http::Method::GET,
            &format!("/audit?device={DEVICE}"),
            Some(ADMIN_TOKEN),
            "",
        )
        .await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_until(STEP, "the override in the audit trail", || async {
        entries().await.iter().any(|e| e["kind"] == "override-set")
    })
    .await
    .unwrap();
    let set = entries()
        .await
        .into_iter()
        .find(|e| e["kind"] == "override-set")
        .unwrap();
    assert_eq!(set["actor"], OPERATOR);
    assert_eq!(set["action"], "block");
    assert_eq!(set["reason"], "reported stolen");

    // The device page shows the decision and the entry.
    let (_, _, page) = console_request(gateway, &device_page, Some(&cookie), None).await;
    assert!(
        page.contains(r#"<strong data-live="state" class="blocked">blocked</strong>"#),
        "{page}"
    );
    assert!(page.contains("carol set block on device EASDEV1"), "{page}");
}

#[tokio::test]
async fn a_wipe_in_uem_reaches_the_event_stream() {
    let stand = Stand::with_console().await;
    let gateway = &stand.gateway;
    let cookie = console_sign_in(gateway, ADMIN_TOKEN)
        .await
        .expect("the admin token signs in");

    let request = http::Request::get(format!(
        "http://{}/ui/events",
        gateway.admin_addr().unwrap()
    ))
    .header("cookie", &cookie)
    .body(http_body_util::Full::default())
    .unwrap();
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    let response = send(&client, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();

    stand.uem.update(DEVICE, Change::EnterpriseWipe).unwrap();
    let mut seen = String::new();
    let event = loop {
        let chunk = next_chunk(&mut body).await.expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(event) = seen
            .split("\n\n")
            .find(|event| event.starts_with("event: decision") && event.contains(DEVICE))
        {
            break event.to_owned();
        }
    };
    let data: serde_json::Value =
        serde_json::from_str(event.split("data: ").nth(1).unwrap().trim()).unwrap();
    assert_eq!(data["device"], DEVICE);
    assert_eq!(data["state"], "blocked");
    assert_eq!(data["reason"], "enterprise-wiped");
    assert_eq!(data["source"], "change-event");
}

#[tokio::test]
async fn in_a_browser_a_wipe_shows_blocked_on_the_open_device_page_and_overview_without_reload() {
    let stand = Stand::with_console().await;
    let admin = format!("http://{}", stand.gateway.admin_addr().unwrap());
    let browser = Browser::start().await;

    browser.goto(&format!("{admin}/ui/login")).await;
    browser.type_into("input[name=token]", OPERATOR_TOKEN).await;
    browser.click("button[type=submit]").await;
    let signed_in = || async { browser.eval("return document.location.pathname").await == "/ui/" };
    wait_until(STEP, "the overview after sign-in", signed_in)
        .await
        .unwrap();

    browser.goto(&format!("{admin}/ui/devices/{DEVICE}")).await;
    let state = || async {
        browser
            .eval(
                "var d = document.getElementById('decision');
                 return [document.body.getAttribute('data-live'),
                         d.querySelector('[data-live=state]').textContent,
                         d.querySelector('[data-live=reason]').textContent];",
            )
            .await
    };
    // The page is open and its event stream connected: from now on no change is missed.
    wait_until(STEP, "the device page's event stream", || async {
        state().await[0] == "connected"
    })
    .await
    .unwrap();
    assert_eq!(state().await[1], "allowed");
    let marker = browser
        .eval("window.notReloaded = true; return window.notReloaded")
        .await;
    assert_eq!(marker, true);

    stand.uem.update(DEVICE, Change::EnterpriseWipe).unwrap();
    wait_until(
        std::time::Duration::from_secs(2),
        "the open page to show the device blocked",
        || async { state().await[1] == "blocked" },
    )
    .await
    .unwrap();
    assert_eq!(state().await[2], "enterprise-wiped");
    assert_eq!(
        browser.eval("return window.notReloaded === true").await,
        true,
        "the page was not reloaded"
    );

    // The overview, open, shows the next wipe in its recent changes.
    browser.goto(&format!("{admin}/ui/")).await;
    let recent = || async {
        browser
            .eval(
                "var first = document.querySelector('#recent-changes li[data-device]');
                 return [document.body.getAttribute('data-live'),
                         first ? first.textContent : ''];",
            )
            .await
    };
    wait_until(STEP, "the overview's event stream", || async {
        recent().await[0] == "connected"
    })
    .await
    .unwrap();
    stand.uem.update(OTHER, Change::EnterpriseWipe).unwrap();
    wait_until(
        std::time::Duration::from_secs(2),
        "the overview to list the other device blocked",
        || async {
            let first = recent().await[1].as_str().unwrap_or("").to_owned();
            first.starts_with(OTHER) && first.contains("blocked (enterprise-wiped")
        },
    )
    .await
    .unwrap();
    browser.quit().await;
}

#[tokio::test]
async fn the_configuration_page_shows_the_effective_settings_without_a_secret() {
    let stand = Stand::with_console().await;
    let gateway = &stand.gateway;
    let cookie = console_sign_in(gateway, OPERATOR_TOKEN).await.unwrap();

    let (status, _, page) = console_request(gateway, "/ui/config", Some(&cookie), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&stand.uem.base_url()), "{page}");
    assert!(page.contains("[compliance]"), "{page}");
    assert!(
        page.contains("token = &quot;&lt;redacted&gt;&quot;"),
        "{page}"
    );
    for secret in [
        ADMIN_TOKEN,
        WEBHOOK_SECRET,
        seg_testbed::uem::DEFAULT_API_PASSWORD,
        stand.uem.tenant_code(),
        OPERATOR_TOKEN,
    ] {
        assert!(!page.contains(secret), "{secret} shown: {page}");
    }
}

/// Saves the screenshots of the overview and of a device page shown in the README
/// (`docs/console-overview.png`, `docs/console-device.png`), at a desktop width. Ignored by
/// default so that test runs do not write into `docs/`; after changing the pages, run
/// `cargo nextest run --test console --run-ignored only screenshots`.
#[tokio::test]
#[ignore = "writes docs/console-*.png"]
async fn screenshots() {
    let stand = Stand::with_console().await;
    let admin = format!("http://{}", stand.gateway.admin_addr().unwrap());
    // Something to show: one device wiped in UEM, blocked by the gateway.
    stand.uem.update(OTHER, Change::EnterpriseWipe).unwrap();
    wait_until(STEP, "the wiped device blocked", || async {
        stand.decision(OTHER).await.0 == "blocked"
    })
    .await
    .unwrap();

    let browser = Browser::start().await;
    browser.set_window_size(1280, 800).await;
    browser.goto(&format!("{admin}/ui/login")).await;
    browser.type_into("input[name=token]", OPERATOR_TOKEN).await;
    browser.click("button[type=submit]").await;
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for (path, file) in [
        ("/ui/".to_owned(), "console-overview.png"),
        (format!("/ui/devices/{OTHER}"), "console-device.png"),
    ] {
        browser.goto(&format!("{admin}{path}")).await;
        wait_until(STEP, "the page's event stream", || async {
            browser
                .eval("return document.body.getAttribute('data-live')")
                .await
                == "connected"
        })
        .await
        .unwrap();
        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{file} is a PNG");
        std::fs::write(docs.join(file), png).unwrap();
    }
    browser.quit().await;
}
