//! The admin console end to end, over real sockets: the test UEM console (its webhook aimed at
//! the gateway) and Exchange, and a gateway with `[compliance]`, `[audit]` and a named operator.
//! Sign-in and sign-out, the CSRF checks (the sign-in form's too), overrides made on a device's
//! and on a user's page (recorded with the operator's name), exact and substring device searches,
//! the overview's decisions per second and Redis reachability, a wipe in UEM reaching the
//! console's event stream, the configuration page without secrets, and (ignored by default) the
//! screenshots in `docs/`.

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
async fn a_cross_site_sign_in_without_the_forms_csrf_token_is_refused() {
    let stand = Stand::with_console().await;
    let gateway = &stand.gateway;
    let token = format!("token={}", form_encode(OPERATOR_TOKEN));

    // Another site's page posting the sign-in form: the browser sends no SameSite=Strict
    // cookie, and that site cannot read the form's token. The right token does not help it.
    let (status, headers, page) = console_request(gateway, "/ui/login", None, Some(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert_eq!(set_cookie(&headers, "seg_console"), None);
    assert!(page.contains("not issued to this browser"), "{page}");

    // A real form's token without its cookie, or its cookie without the token: refused too.
    let (form_cookie, csrf) = console_sign_in_form(gateway).await;
    let with_csrf = format!("csrf={csrf}&{token}");
    let (status, _, _) = console_request(gateway, "/ui/login", None, Some(&with_csrf)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) =
        console_request(gateway, "/ui/login", Some(&form_cookie), Some(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Both, as the browser that opened the form sends them: signed in.
    let (status, headers, _) =
        console_request(gateway, "/ui/login", Some(&form_cookie), Some(&with_csrf)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let session = set_cookie(&headers, "seg_console").expect("a session cookie");
    let (status, _, _) = console_request(gateway, "/ui/", Some(&session), None).await;
    assert_eq!(status, StatusCode::OK);
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
async fn a_user_override_by_form_covers_the_users_devices_and_is_recorded_with_the_operator() {
    let stand = Stand::with_console().await;
    let gateway = &stand.gateway;
    let cookie = console_sign_in(gateway, OPERATOR_TOKEN).await.unwrap();
    // From the device's page to its user's page, as an operator clicks.
    let (_, _, device_page) = console_request(
        gateway,
        &format!("/ui/devices/{DEVICE}"),
        Some(&cookie),
        None,
    )
    .await;
    let user_page = "/ui/users/alice%40test.local";
    assert!(
        device_page.contains(&format!(r#"<a href="{user_page}">alice@test.local</a>"#)),
        "{device_page}"
    );
    let (status, _, page) = console_request(gateway, user_page, Some(&cookie), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(DEVICE) && !page.contains(OTHER), "{page}");
    let form_path = format!("{user_page}/override");

    let (status, _, _) = console_request(
        gateway,
        &form_path,
        Some(&cookie),
        Some("action=block&reason=left"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(stand.decision(DEVICE).await.0, "allowed");

    let csrf = console_csrf(&page);
    let form = format!(
        "csrf={csrf}&action=block&reason={}",
        form_encode("left the company")
    );
    let (status, headers, _) =
        console_request(gateway, &form_path, Some(&cookie), Some(&form)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], user_page);
    assert_eq!(
        stand.decision(DEVICE).await,
        ("blocked".to_owned(), "user-override".to_owned())
    );
    assert_eq!(stand.decision(OTHER).await.0, "allowed", "bob's device");

    let form = format!(
        "csrf={csrf}&action=clear&reason={}",
        form_encode("came back")
    );
    let (status, _, _) = console_request(gateway, &form_path, Some(&cookie), Some(&form)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(stand.decision(DEVICE).await.0, "allowed");

    let entries = || async {
        let (_, body) = admin_request(
            gateway,
            http::Method::GET,
            "/audit?user=alice@test.local",
            Some(ADMIN_TOKEN),
            "",
        )
        .await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_until(STEP, "both overrides in the audit trail", || async {
        entries()
            .await
            .iter()
            .any(|e| e["kind"] == "override-cleared")
    })
    .await
    .unwrap();
    let entries = entries().await;
    let find = |kind: &str| {
        entries
            .iter()
            .find(|e| e["kind"] == kind && e["target"]["user"] == "alice@test.local")
            .unwrap_or_else(|| panic!("an {kind} entry: {entries:?}"))
    };
    let set = find("override-set");
    assert_eq!(set["actor"], OPERATOR);
    assert_eq!(set["action"], "block");
    assert_eq!(set["reason"], "left the company");
    let cleared = find("override-cleared");
    assert_eq!(cleared["actor"], OPERATOR);
    assert_eq!(cleared["reason"], "came back");

    // The user's page shows both, newest first.
    let (_, _, page) = console_request(gateway, user_page, Some(&cookie), None).await;
    let cleared_at = page.find("carol cleared the override of user alice@test.local");
    let set_at = page.find("carol set block on user alice@test.local");
    assert!(
        cleared_at.is_some() && set_at.is_some() && cleared_at < set_at,
        "{page}"
    );
}

#[tokio::test]
async fn an_exact_device_id_or_user_is_found_by_lookup_and_a_part_by_search() {
    let stand = Stand::with_console().await;
    let gateway = &stand.gateway;
    let cookie = console_sign_in(gateway, OPERATOR_TOKEN).await.unwrap();
    for exact in ["easdev1", "Alice%40Test.Local"] {
        let (status, _, page) = console_request(
            gateway,
            &format!("/ui/devices?q={exact}"),
            Some(&cookie),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains(r#"<p id="exact-match">"#), "{exact}: {page}");
        assert!(
            page.contains("1 devices;") && page.contains(&format!(">{DEVICE}<")),
            "{exact}: {page}"
        );
    }
    // A part of both ids: a search, not a lookup.
    let (_, _, page) = console_request(gateway, "/ui/devices?q=easdev", Some(&cookie), None).await;
    assert!(!page.contains(r#"id="exact-match""#), "{page}");
    assert!(page.contains("2 devices;"), "{page}");
    // An exact id asked as a part: every id containing it (EASDEV1 alone here).
    let (_, _, page) = console_request(
        gateway,
        "/ui/devices?q=EASDEV1&match=contains",
        Some(&cookie),
        None,
    )
    .await;
    assert!(
        !page.contains(r#"id="exact-match""#) && page.contains("1 devices;"),
        "{page}"
    );
}

/// What follows `marker` in `page` up to its `</dd>` (tags included).
fn overview_value<'a>(page: &'a str, marker: &str) -> &'a str {
    page.split(marker)
        .nth(1)
        .and_then(|rest| rest.split("</dd>").next())
        .unwrap_or_else(|| panic!("{marker} in {page}"))
}

#[tokio::test]
async fn the_overview_shows_the_decisions_per_second_of_the_gateways_traffic() {
    let stand = Stand::with_console().await;
    let gateway = &stand.gateway;
    let cookie = console_sign_in(gateway, OPERATOR_TOKEN).await.unwrap();
    let (_, _, page) = console_request(gateway, "/ui/", Some(&cookie), None).await;
    assert!(
        !page.contains("data-reachability"),
        "neither Redis nor KCD: {page}"
    );

    // Twenty EWS requests from a known device, each decided by the compliance layer.
    let url = format!("{}/EWS/Exchange.asmx", http_base(gateway));
    for _ in 0..20 {
        let request = seg_testbed::harness::ews_request(
            &url,
            Some(&stand.exchange.basic("alice@test.local")),
            &[("X-Device-Id", DEVICE)],
            soap("<m:GetFolder/>"),
        )
        .unwrap();
        let response = stand.exchange.client.send(request).await.unwrap();
        assert_ne!(
            response.status(),
            StatusCode::FORBIDDEN,
            "alice's device is allowed"
        );
    }
    // The console samples the count once a second: the rate shows once a sample has it.
    let rate = || async {
        let (_, _, page) = console_request(gateway, "/ui/", Some(&cookie), None).await;
        let value = overview_value(&page, r#"<dd id="decisions-per-second">"#).to_owned();
        value
            .split(' ')
            .next()
            .and_then(|rate| rate.parse::<f64>().ok())
    };
    wait_until(
        STEP,
        "a decision rate above zero on the overview",
        || async { rate().await.is_some_and(|rate| rate > 0.0) },
    )
    .await
    .unwrap();
    let (_, _, page) = console_request(gateway, "/ui/", Some(&cookie), None).await;
    assert!(
        overview_value(&page, r#"<dd id="decisions-per-second">"#).ends_with("(over the last 10s)"),
        "{page}"
    );
}

#[tokio::test]
async fn the_overview_shows_whether_redis_answers() {
    let mut redis = tokio::task::spawn_blocking(seg_testbed::redis::RedisServer::start)
        .await
        .unwrap()
        .expect("redis-server starts (scripts/install-deps.sh installs it)");
    let url = redis.url();
    let stand = ComplianceStand::start(
        vec![seg_testbed::uem::Device::new(DEVICE, 1, "alice@test.local")],
        |config, _| {
            share_through_redis(
                config,
                &url,
                std::time::Duration::from_secs(2),
                "seg-console-redis",
            );
        },
    )
    .await;
    let gateway = &stand.gateway;
    let cookie = console_sign_in(gateway, ADMIN_TOKEN).await.unwrap();
    let redis_state = || async {
        let (_, _, page) = console_request(gateway, "/ui/", Some(&cookie), None).await;
        overview_value(&page, r#"<dd data-reachability="Redis">"#).to_owned()
    };
    wait_until(STEP, "Redis reachable on the overview", || async {
        redis_state()
            .await
            .starts_with(r#"<strong class="allowed">reachable</strong>"#)
    })
    .await
    .unwrap();
    redis.stop();
    wait_until(STEP, "Redis unreachable on the overview", || async {
        redis_state()
            .await
            .starts_with(r#"<strong class="blocked">unreachable</strong>"#)
    })
    .await
    .unwrap();
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
