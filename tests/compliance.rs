//! The mission end to end, over real sockets: the test UEM console, the test Exchange, and the
//! gateway with compliance on. A wiped device's stream is cut and its requests refused; ENS is
//! told; the device comes back when UEM says it is compliant; restarts and a broken UEM never
//! open the gate.

mod support;

use http::StatusCode;
use seg_testbed::harness::{self, wait_until, xml_text};
use seg_testbed::uem::{Change, Device, Mode};
use seg_testbed::upstream::ScriptedUpstream;
use std::time::{Duration, Instant};
use support::*;

const ALICE: &str = "alice@test.local";
const DEVICE: &str = "EASDEV1";
const STREAMING_SUBSCRIBE: &str = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;

/// EWS `GetStreamingEvents` on `subscription`, open for 30 minutes.
fn get_streaming_events(subscription: &str) -> String {
    format!(
        "<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{subscription}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents>"
    )
}

/// The compliance stand (tests/support): alice's `DEVICE` and bob's `EASDEV2` in UEM.
type Stand = ComplianceStand;

impl Stand {
    async fn two_devices() -> Stand {
        let devices = vec![
            Device::new(DEVICE, 1, ALICE),
            Device::new("EASDEV2", 2, "bob@test.local"),
        ];
        ComplianceStand::start(devices, |_, _| {}).await
    }

    /// Waits for the ENS callback announcing `state` (`blocked` or `allowed`); returns its body.
    async fn callback(&self, state: &str) -> serde_json::Value {
        let wanted = format!(r#""state":"{state}""#);
        let find = || {
            self.ens
                .received()
                .into_iter()
                .find(|r| String::from_utf8_lossy(&r.body).contains(&wanted))
        };
        wait_until(STEP, "the ENS callback", || {
            let found = find().is_some();
            async move { found }
        })
        .await
        .unwrap();
        serde_json::from_slice(&find().unwrap().body).unwrap()
    }

    fn ews_url(&self) -> String {
        format!("{}/EWS/Exchange.asmx", http_base(&self.gateway))
    }

    /// Sends an operation through the gateway as alice on `device`.
    async fn ews(&self, device: &str, operation: &str) -> http::Response<hyper::body::Incoming> {
        self.ews_envelope(device, soap(operation)).await
    }

    /// Sends a whole SOAP envelope through the gateway as alice on `device`.
    async fn ews_envelope(
        &self,
        device: &str,
        envelope: String,
    ) -> http::Response<hyper::body::Incoming> {
        let alice = self.exchange.basic(ALICE);
        let request = harness::ews_request(
            &self.ews_url(),
            Some(&alice),
            &[("X-Device-Id", device)],
            envelope,
        )
        .unwrap();
        self.exchange.client.send(request).await.unwrap()
    }
}

#[tokio::test]
async fn wiped_device_is_cut_refused_reported_and_readmitted_when_compliant() {
    let stand = Stand::two_devices().await;

    // A compliant device subscribes and streams.
    let subscribed = text(stand.ews(DEVICE, STREAMING_SUBSCRIBE).await).await;
    assert_eq!(
        xml_text(&subscribed, "ResponseCode").as_deref(),
        Some("NoError"),
        "{subscribed}"
    );
    let subscription = xml_text(&subscribed, "SubscriptionId").unwrap();
    let stream = stand
        .ews(DEVICE, &get_streaming_events(&subscription))
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.into_body();
    stand
        .exchange
        .server
        .deliver(ALICE, "before the wipe")
        .unwrap();
    assert!(
        next_chunk(&mut stream).await.is_some(),
        "the stream delivers while compliant"
    );

    // UEM wipes it; the change event reaches the gateway's webhook.
    let wiped_at = Instant::now();
    stand.uem.update(DEVICE, Change::EnterpriseWipe).unwrap();

    // Within a second its stream is cut.
    assert_cut_within_a_second(&mut stream, "the stream to be cut after the wipe").await;
    let cut_after = wiped_at.elapsed();

    // Its next Subscribe is refused with 403 and the compliance header; Exchange sees nothing.
    let before = stand.exchange.server.requests().len();
    let refused = stand.ews(DEVICE, STREAMING_SUBSCRIBE).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        refused.headers()["x-compliance-status"],
        "blocked; reason=enterprise-wiped"
    );
    assert!(
        text(refused)
            .await
            .contains(">ErrorAccessDenied</e:ResponseCode>")
    );
    assert_eq!(
        stand.exchange.server.requests().len(),
        before,
        "nothing of a blocked request reaches Exchange"
    );

    // ENS was told.
    assert_eq!(
        stand.callback("blocked").await,
        serde_json::json!({"device_id": DEVICE, "user": ALICE, "state": "blocked", "reason": "enterprise-wiped"})
    );

    // Another device of the same tenant is untouched.
    assert_eq!(
        stand.ews("EASDEV2", STREAMING_SUBSCRIBE).await.status(),
        StatusCode::OK,
        "another device of the tenant still passes"
    );

    // UEM marks it compliant again; its next request passes.
    stand.uem.update(DEVICE, Change::Compliant).unwrap();
    wait_until(STEP, "the device to be let through again", || async {
        stand.ews(DEVICE, STREAMING_SUBSCRIBE).await.status() == StatusCode::OK
    })
    .await
    .unwrap();
    assert_eq!(stand.callback("allowed").await["reason"], "compliant");
    eprintln!("stream cut {cut_after:?} after the wipe");
}

/// The operation sniffer reads at most `ews.sniff_limit` (64 KiB) of a body, so it cannot name a
/// `GetStreamingEvents` behind a larger SOAP header (here a comment, which Exchange's XML reader
/// skips). Its stream must be cut on a block all the same.
#[tokio::test]
async fn a_stream_whose_operation_the_gateway_cannot_read_is_cut_too() {
    let stand = Stand::two_devices().await;
    let subscribed = text(stand.ews(DEVICE, STREAMING_SUBSCRIBE).await).await;
    let subscription = xml_text(&subscribed, "SubscriptionId").unwrap();
    let padding = format!("<s:Header><!--{}-->", "x".repeat(70 * 1024));
    let envelope = soap(&get_streaming_events(&subscription)).replacen("<s:Header>", &padding, 1);
    let stream = stand.ews_envelope(DEVICE, envelope).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.into_body();
    stand.exchange.server.deliver(ALICE, "unnamed").unwrap();
    assert!(
        next_chunk(&mut stream).await.is_some(),
        "Exchange streams for the padded request"
    );

    stand.uem.update(DEVICE, Change::EnterpriseWipe).unwrap();
    assert_cut_within_a_second(&mut stream, "the unnamed stream to be cut after the wipe").await;
}

/// ActiveSync's `Ping` and `Sync` wait at Exchange, without a byte either way, for as long as
/// the device's heartbeat (up to 59 minutes). One still waiting when its device is wiped is
/// answered within a second with the 403 of a blocked device, not when Exchange answers.
#[tokio::test]
async fn a_waiting_ping_or_sync_of_a_wiped_device_is_answered_403_within_a_second() {
    for command in ["Ping", "Sync"] {
        let exchange = ScriptedUpstream::stalling().await.unwrap();
        let stand = ComplianceStand::start(vec![Device::new(DEVICE, 1, ALICE)], |config, _| {
            config.exchange.url = exchange.url();
            config.activesync.enable_proxy = true;
        })
        .await;
        let alice = stand.exchange.basic(ALICE);
        let url = format!(
            "{}/Microsoft-Server-ActiveSync?Cmd={command}&User={ALICE}&DeviceId={DEVICE}&DeviceType=iPhone",
            http_base(&stand.gateway)
        );
        let request = harness::ews_request(&url, Some(&alice), &[], "").unwrap();
        let client = stand.exchange.client.clone();
        let waiting = tokio::spawn(async move { client.send(request).await });
        exchange.wait_for_requests(1, STEP).await.unwrap();

        stand.uem.update(DEVICE, Change::EnterpriseWipe).unwrap();
        let answered = harness::within(
            Duration::from_secs(1),
            "the waiting request's answer",
            waiting,
        )
        .await
        .unwrap_or_else(|_| panic!("{command}: not answered within a second of the wipe"))
        .unwrap()
        .unwrap();
        assert_eq!(answered.status(), StatusCode::FORBIDDEN, "{command}");
        assert_eq!(
            answered.headers()["x-compliance-status"],
            "blocked; reason=enterprise-wiped",
            "{command}"
        );
    }
}

#[tokio::test]
async fn restart_while_uem_is_down_keeps_the_wiped_device_blocked() {
    let stand = Stand::two_devices().await;
    stand.uem.update(DEVICE, Change::EnterpriseWipe).unwrap();
    wait_until(STEP, "the wipe to take effect", || async {
        stand.ews(DEVICE, STREAMING_SUBSCRIBE).await.status() == StatusCode::FORBIDDEN
    })
    .await
    .unwrap();
    let snapshot = stand.dir.path().join("view.snapshot");
    wait_until(STEP, "the view to be saved with the wipe", || {
        let saved = std::fs::read_to_string(&snapshot)
            .unwrap_or_default()
            .contains("enterprise_wiped");
        async move { saved }
    })
    .await
    .unwrap();

    stand.uem.set_mode(Mode::Down);
    let stand = stand.restart(|_| {}).await; // ready from the snapshot, with UEM down

    let refused = stand.ews(DEVICE, STREAMING_SUBSCRIBE).await;
    assert_eq!(
        refused.headers()["x-compliance-status"],
        "blocked; reason=enterprise-wiped"
    );
    assert_eq!(
        stand.ews("EASDEV2", STREAMING_SUBSCRIBE).await.status(),
        StatusCode::OK,
        "another device of the tenant still passes"
    );
}

#[tokio::test]
async fn garbage_from_uem_keeps_the_last_view() {
    let stand = Stand::two_devices().await;
    stand.uem.set_mode(Mode::Garbage);
    let token = format!("Bearer {ADMIN_TOKEN}");
    let sync = format!("http://{}/sync", stand.gateway.admin_addr().unwrap());
    let request = http::Request::post(&sync)
        .header("authorization", &token)
        .body(http_body_util::Full::default())
        .unwrap();
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    assert_eq!(
        client.send(request).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    wait_until(STEP, "the failed sync to be recorded", || {
        let client = client.clone();
        let request = http::Request::get(&sync)
            .header("authorization", &token)
            .body(http_body_util::Full::default())
            .unwrap();
        async move {
            let Ok(response) = client.send(request).await else {
                return false;
            };
            let status: serde_json::Value = serde_json::from_str(
                &harness::body_text(response.into_body())
                    .await
                    .unwrap_or_default(),
            )
            .unwrap_or_default();
            status["failures"].as_u64().unwrap_or(0) > 0
        }
    })
    .await
    .unwrap();

    assert_eq!(
        stand.ews(DEVICE, STREAMING_SUBSCRIBE).await.status(),
        StatusCode::OK,
        "the last good view still allows the device"
    );
    let (compliance, _) = stand.gateway.compliance().unwrap();
    assert_eq!(compliance.view().len(), 2);
}

#[tokio::test]
async fn unknown_device_follows_the_default() {
    let stand = Stand::two_devices().await;
    let refused = stand.ews("NOT-IN-UEM", STREAMING_SUBSCRIBE).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        refused.headers()["x-compliance-status"],
        "blocked; reason=unknown-device"
    );

    let stand = stand
        .restart(|config| {
            config.compliance.as_mut().unwrap().unknown_device =
                compliance_policy::policy::UnknownDevice::Allow;
        })
        .await;
    assert_eq!(
        stand.ews("NOT-IN-UEM", STREAMING_SUBSCRIBE).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn metrics_show_the_wipe_block_on_the_admin_listener() {
    let stand = Stand::two_devices().await;
    stand.uem.update(DEVICE, Change::EnterpriseWipe).unwrap();
    wait_until(STEP, "the wipe to take effect", || async {
        stand.ews(DEVICE, STREAMING_SUBSCRIBE).await.status() == StatusCode::FORBIDDEN
    })
    .await
    .unwrap();

    // Open: no token.
    let url = format!("http://{}/metrics", stand.gateway.admin_addr().unwrap());
    let request = http::Request::get(url)
        .body(http_body_util::Full::default())
        .unwrap();
    let client = seg_testbed::client::HttpClient::accepting_any_certificate();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let scrape = harness::body_text(response.into_body()).await.unwrap();
    let value = |series: &str| -> f64 {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing from\n{scrape}"))
            .parse()
            .unwrap()
    };
    assert!(
        value(r#"seg_compliance_decisions_total{result="blocked",reason="enterprise-wiped"}"#)
            >= 1.0
    );
    assert!(
        value(r#"seg_compliance_transitions_total{to="blocked",source="change-event"}"#) >= 1.0
    );
    assert_eq!(value("seg_compliance_view_devices"), 2.0);
    assert!(value(r#"seg_proxy_responses_total{route="ews",status_class="4xx"}"#) >= 1.0);
}

#[tokio::test]
async fn user_override_applies_to_the_user_of_the_credentials() {
    let stand = Stand::two_devices().await;
    assert_eq!(
        admin_user_override(&stand.gateway, ALICE, Some("block")).await,
        StatusCode::OK
    );

    // Bob's device, but alice's credentials: the user of the request is alice, who is blocked.
    let refused = stand.ews("EASDEV2", STREAMING_SUBSCRIBE).await;
    assert_eq!(
        refused.headers()["x-compliance-status"],
        "blocked; reason=user-override"
    );
    // Bob's credentials in front of alice's: the gateway would decide on bob, while Exchange
    // might sign in alice. Refused before either.
    let bob = stand.exchange.basic("bob@test.local");
    let alice = stand.exchange.basic(ALICE);
    let request = harness::ews_request(
        &stand.ews_url(),
        Some(&bob),
        &[
            ("Authorization", alice.as_str()),
            ("X-Device-Id", "EASDEV2"),
        ],
        soap(STREAMING_SUBSCRIBE),
    )
    .unwrap();
    let refused = stand.exchange.client.send(request).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers()["x-seg-fault"], "duplicate-authorization");
}

/// `OPTIONS /Microsoft-Server-ActiveSync` with `authorization`: ActiveSync's protocol discovery,
/// which names no device (MS-ASHTTP 2.2.3).
async fn activesync_discovery(
    stand: &Stand,
    authorization: &str,
) -> http::Response<hyper::body::Incoming> {
    let url = format!("{}/Microsoft-Server-ActiveSync", http_base(&stand.gateway));
    let request = http::Request::options(url)
        .header(http::header::AUTHORIZATION, authorization)
        .body(http_body_util::Full::default())
        .unwrap();
    stand.exchange.client.send(request).await.unwrap()
}

/// Every EAS client asks `OPTIONS` without a device id before its first command: with the
/// gateway failing closed on unknown devices, it still reaches Exchange, unless its user is
/// blocked.
#[tokio::test]
async fn activesync_discovery_reaches_exchange_unless_its_user_is_blocked() {
    let stand = ComplianceStand::start(vec![Device::new(DEVICE, 1, ALICE)], |config, _| {
        config.activesync.enable_proxy = true;
    })
    .await;
    let alice = stand.exchange.basic(ALICE);
    let answered = activesync_discovery(&stand, &alice).await;
    assert_eq!(answered.status(), StatusCode::OK);
    assert!(answered.headers().get("x-compliance-status").is_none());
    assert!(
        answered.headers()["ms-asprotocolversions"]
            .to_str()
            .unwrap()
            .contains("16.1"),
        "Exchange's answer: {:?}",
        answered.headers()
    );
    // A command without a device id is still an unknown device.
    let sync = harness::ews_request(
        &format!(
            "{}/Microsoft-Server-ActiveSync?Cmd=FolderSync",
            http_base(&stand.gateway)
        ),
        Some(&alice),
        &[],
        "",
    )
    .unwrap();
    let refused = stand.exchange.client.send(sync).await.unwrap();
    assert_eq!(
        refused.headers()["x-compliance-status"],
        "blocked; reason=unknown-device"
    );

    assert_eq!(
        admin_user_override(&stand.gateway, ALICE, Some("block")).await,
        StatusCode::OK
    );
    let refused = activesync_discovery(&stand, &alice).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        refused.headers()["x-compliance-status"],
        "blocked; reason=user-override"
    );
}

/// `compliance.activesync_discovery = "decide"`: the discovery is an unknown device like any
/// request without a device id.
#[tokio::test]
async fn activesync_discovery_set_to_decide_is_an_unknown_device() {
    let stand = ComplianceStand::start(vec![Device::new(DEVICE, 1, ALICE)], |config, _| {
        config.activesync.enable_proxy = true;
        config.compliance.as_mut().unwrap().activesync_discovery =
            compliance_policy::policy::ActiveSyncDiscovery::Decide;
    })
    .await;
    let refused = activesync_discovery(&stand, &stand.exchange.basic(ALICE)).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        refused.headers()["x-compliance-status"],
        "blocked; reason=unknown-device"
    );
}

/// Windows Mail and Windows Phone may send ActiveSync's parameters base64-encoded in the query
/// (MS-ASHTTP 2.2.1.1.1.1), a GUID device id as its 16 bytes. With unknown devices allowed, a
/// device id the gateway failed to read there would let a compromised device through as an
/// unknown one.
#[tokio::test]
async fn activesync_in_the_base64_query_form_is_decided_by_its_device() {
    const WINDOWS: &str = "3F2A00FF102030405060708090A0B0C0";
    let devices = vec![
        Device::new(DEVICE, 1, ALICE),
        Device {
            compromised: true,
            ..Device::new(WINDOWS, 2, ALICE)
        },
    ];
    let stand = ComplianceStand::start(devices, |config, _| {
        config.activesync.enable_proxy = true;
        config.compliance.as_mut().unwrap().unknown_device =
            compliance_policy::policy::UnknownDevice::Allow;
    })
    .await;
    let alice = stand.exchange.basic(ALICE);
    let send = |query: &str| {
        let url = format!(
            "{}/Microsoft-Server-ActiveSync?{query}",
            http_base(&stand.gateway)
        );
        let request = harness::ews_request(&url, Some(&alice), &[], "").unwrap();
        stand.exchange.client.send(request)
    };
    // Protocol 14.1, Sync (code 0) from the Windows device's 16 bytes, type WindowsMail, user
    // alice; then the same in the plain form.
    let base64 = send("jQAJBBA/KgD/ECAwQFBgcICQoLDAAAtXaW5kb3dzTWFpbAgQYWxpY2VAdGVzdC5sb2NhbA==")
        .await
        .unwrap();
    let plain = send(&format!(
        "Cmd=Sync&DeviceId={WINDOWS}&DeviceType=WindowsMail"
    ))
    .await
    .unwrap();
    for refused in [&base64, &plain] {
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            refused.headers()["x-compliance-status"],
            "blocked; reason=compromised"
        );
    }
    // Ping (code 18) from the compliant EASDEV1: passed to Exchange, whose stand-in serves
    // only OPTIONS on ActiveSync (501).
    let ping = send("jRIJBAdFQVNERVYxAAtXaW5kb3dzTWFpbAgQYWxpY2VAdGVzdC5sb2NhbA%3D%3D")
        .await
        .unwrap();
    assert_eq!(ping.status(), StatusCode::NOT_IMPLEMENTED);
    assert!(ping.headers().get("x-compliance-status").is_none());
}
