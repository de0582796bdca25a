//! ENS2's half of the mission, end to end over real sockets: the test Exchange, the test UEM
//! console, the gateway with compliance on, and mock-ens registering devices through its API.
//! A wiped device's notifications stop within a second, whether it streams through the gateway
//! or Exchange pushes to ENS directly; they resume when UEM says it is compliant again; a
//! restart of mock-ens loses nothing.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use mock_ens::MockEns;
use mock_ens::api::{DeviceSummary, DeviceView};
use mock_ens::config::{Config as EnsConfig, SubscriptionTiming};
use mock_ens::store::DeviceState;
use seg_proxy::Gateway;
use seg_testbed::client::HttpClient;
use seg_testbed::exchange::NegotiateConfig;
use seg_testbed::harness::{self, TEST_PASSWORD, TestExchange, reserve_port, wait_until};
use seg_testbed::kdc::{EXCHANGE_SERVICE, RunningKdc};
use seg_testbed::pki::ClientCertSpec;
use seg_testbed::uem::{self, Change, Device, UemConfig, UemHandle, UemServer};
use std::time::{Duration, Instant};
use support::*;

const ALICE: &str = "alice@test.local";
const BOB: &str = "bob@test.local";
/// Alice's phone: a streaming subscription through the gateway.
const STREAMING_DEVICE: &str = "EASDEV1";
/// Bob's phone: a push subscription; Exchange calls mock-ens directly.
const PUSH_DEVICE: &str = "EASDEV2";
const API_TOKEN: &str = "ens-api-token-for-tests-0123456789";

struct Stand {
    exchange: TestExchange,
    uem: UemHandle,
    _gateway: Gateway,
    ens: Option<MockEns>,
    ens_config: EnsConfig,
    http: HttpClient,
    _dir: tempfile::TempDir,
}

impl Stand {
    async fn start() -> Stand {
        Stand::start_with(None).await
    }

    /// [`Stand::start`], and with `kdc` certificate-based authentication: Exchange accepts
    /// Kerberos with its keytab from `kdc`, the gateway listens on TLS too, asking for client
    /// certificates of Exchange's test CA and answering Exchange's Negotiate by KCD through
    /// `kdc`, and mock-ens reaches the gateway over that TLS listener.
    async fn start_with(kdc: Option<&RunningKdc>) -> Stand {
        let dir = tempfile::tempdir().unwrap();
        let keytab = kdc.map(|kdc| kdc.keytab(EXCHANGE_SERVICE).unwrap().to_path_buf());
        let exchange = TestExchange::start(|config| {
            // One EWS "minute" lasts a second, so heartbeats and stream timeouts are quick.
            config.minute = Duration::from_secs(1);
            config.keepalive_interval = Duration::from_secs(2);
            config.negotiate = keytab.map(NegotiateConfig::new);
        })
        .await
        .unwrap();
        let admin = reserve_port().unwrap();
        let ens_addr = reserve_port().unwrap();
        let mut uem_config = UemConfig::new(vec![
            Device::new(STREAMING_DEVICE, 1, ALICE),
            Device::new(PUSH_DEVICE, 2, BOB),
        ]);
        uem_config.webhook = Some(uem::Webhook::new(
            &format!("http://{admin}/events/compliance"),
            WEBHOOK_SECRET,
        ));
        let uem =
            UemServer::spawn(harness::local_listener().await.unwrap(), None, uem_config).unwrap();
        let mut config = gateway_config(
            &exchange,
            &uem,
            &format!("http://{ens_addr}/gateway/compliance"),
            admin,
            dir.path().join("view.snapshot"),
            dir.path(),
        );
        if let Some(kdc) = kdc {
            with_client_certificates(&mut config, &exchange, dir.path());
            with_cba_kcd(&mut config, kdc, false);
        }
        let gateway = start(config).await;
        let (gateway_url, gateway_trust_store) = match kdc {
            // gateway_config wrote Exchange's CA, which also signs the gateway's certificate.
            Some(_) => (
                https_ews_url(&gateway),
                Some(dir.path().join("exchange-ca.pem")),
            ),
            None => (format!("{}/EWS/Exchange.asmx", http_base(&gateway)), None),
        };
        let ens_config = EnsConfig {
            listen: ens_addr,
            gateway_url,
            gateway_trust_store,
            public_url: None,
            store: dir.path().join("ens.redb"),
            key_file: None,
            api_token: API_TOKEN.into(),
            device_id_header: "X-Device-Id".into(),
            subscriptions: SubscriptionTiming {
                status_frequency_minutes: 1,
                minute: Duration::from_secs(1),
                streaming_connection_minutes: 30,
                pull_interval: Duration::from_millis(200),
                first_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                request_timeout: Duration::from_secs(5),
            },
        };
        let ens = MockEns::start(ens_config.clone()).await.unwrap();
        Stand {
            exchange,
            uem,
            _gateway: gateway,
            ens: Some(ens),
            ens_config,
            http: HttpClient::accepting_any_certificate(),
            _dir: dir,
        }
    }

    fn ens_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ens_config.listen)
    }

    async fn api(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(self.ens_url(path))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("ApiToken", token);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let response = self
            .http
            .send(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = response.status();
        (status, text(response).await)
    }

    async fn register(&self, device_id: &str, user: &str, mode: &str) {
        let auth = serde_json::json!({"basic": {"user": user, "password": TEST_PASSWORD}});
        let (status, body) = self.register_with(device_id, user, mode, auth).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// `POST /devices` with `auth` as the credentials: the answer's status and body.
    async fn register_with(
        &self,
        device_id: &str,
        user: &str,
        mode: &str,
        auth: serde_json::Value,
    ) -> (StatusCode, String) {
        self.api(
            Method::POST,
            "/devices",
            Some(API_TOKEN),
            Some(serde_json::json!({
                "device_id": device_id,
                "user": user,
                "mailbox": user,
                "mode": mode,
                "auth": auth,
            })),
        )
        .await
    }

    async fn device(&self, device_id: &str) -> DeviceView {
        let (status, body) = self
            .api(
                Method::GET,
                &format!("/devices/{device_id}"),
                Some(API_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn wait_for_state(&self, device_id: &str, state: DeviceState, deadline: Duration) {
        wait_until(
            deadline,
            &format!("{device_id} to be {state:?}"),
            || async move { self.device(device_id).await.state == state },
        )
        .await
        .unwrap();
    }

    /// Waits until mock-ens holds a subscription for the device.
    async fn wait_for_subscription(&self, device_id: &str) {
        wait_until(STEP, &format!("{device_id} to subscribe"), || async move {
            self.device(device_id).await.subscription_id.is_some()
        })
        .await
        .unwrap();
    }

    /// Waits until the device's notifications include `subject`.
    async fn wait_for_notification(&self, device_id: &str, subject: &str) {
        wait_until(
            STEP,
            &format!("{device_id} to be notified of {subject:?}"),
            || async move {
                self.device(device_id)
                    .await
                    .notifications
                    .iter()
                    .any(|n| n.subject == subject)
            },
        )
        .await
        .unwrap();
    }

    /// Waits until Exchange has a subscription for each device that watches a mailbox.
    async fn wait_for_subscriptions(&self, count: usize) {
        let server = &self.exchange.server;
        wait_until(STEP, "the devices' subscriptions", || async move {
            server.subscription_count() >= count
        })
        .await
        .unwrap();
    }

    async fn restart_ens(&mut self) {
        if let Some(ens) = self.ens.take() {
            ens.shutdown().await;
        }
        self.ens = Some(MockEns::start(self.ens_config.clone()).await.unwrap());
    }
}

#[tokio::test]
async fn wiped_devices_stop_being_notified_and_resume_when_compliant() {
    let mut stand = Stand::start().await;
    stand.register(STREAMING_DEVICE, ALICE, "streaming").await;
    stand.register(PUSH_DEVICE, BOB, "push").await;
    stand.wait_for_subscriptions(2).await;

    // Both are notified of new mail.
    stand.exchange.server.deliver(ALICE, "for alice 1").unwrap();
    stand.exchange.server.deliver(BOB, "for bob 1").unwrap();
    stand
        .wait_for_notification(STREAMING_DEVICE, "for alice 1")
        .await;
    stand.wait_for_notification(PUSH_DEVICE, "for bob 1").await;

    // UEM wipes the push device: Exchange calls ENS directly, so only ENS can stop it.
    let wiped_at = Instant::now();
    stand
        .uem
        .update(PUSH_DEVICE, Change::EnterpriseWipe)
        .unwrap();
    stand
        .wait_for_state(PUSH_DEVICE, DeviceState::Blocked, Duration::from_secs(1))
        .await;
    let blocked_after = wiped_at.elapsed();
    let view = stand.device(PUSH_DEVICE).await;
    assert_eq!(view.reason.as_deref(), Some("enterprise-wiped"));

    // Mail for bob is no longer turned into a notification; alice, untouched, still gets hers.
    stand.exchange.server.deliver(BOB, "for bob 2").unwrap();
    stand.exchange.server.deliver(ALICE, "for alice 2").unwrap();
    stand
        .wait_for_notification(STREAMING_DEVICE, "for alice 2")
        .await;
    // Exchange's next push for bob is answered Unsubscribe, which ends his subscription there.
    let server = &stand.exchange.server;
    wait_until(STEP, "bob's push subscription to end", || async move {
        server.subscription_count() == 1
    })
    .await
    .unwrap();
    assert!(
        !stand
            .device(PUSH_DEVICE)
            .await
            .notifications
            .iter()
            .any(|n| n.subject == "for bob 2"),
        "a blocked device is not notified"
    );

    // UEM wipes the streaming device: its stream through the gateway is cut.
    let wiped_at = Instant::now();
    stand
        .uem
        .update(STREAMING_DEVICE, Change::EnterpriseWipe)
        .unwrap();
    stand
        .wait_for_state(
            STREAMING_DEVICE,
            DeviceState::Blocked,
            Duration::from_secs(1),
        )
        .await;
    let streaming_blocked_after = wiped_at.elapsed();

    // Both compliant again: notifications resume without registering again.
    stand.uem.update(PUSH_DEVICE, Change::Compliant).unwrap();
    stand
        .uem
        .update(STREAMING_DEVICE, Change::Compliant)
        .unwrap();
    stand
        .wait_for_state(PUSH_DEVICE, DeviceState::Active, STEP)
        .await;
    stand
        .wait_for_state(STREAMING_DEVICE, DeviceState::Active, STEP)
        .await;
    stand.wait_for_subscriptions(2).await;
    stand.exchange.server.deliver(BOB, "for bob 3").unwrap();
    stand.exchange.server.deliver(ALICE, "for alice 3").unwrap();
    stand.wait_for_notification(PUSH_DEVICE, "for bob 3").await;
    stand
        .wait_for_notification(STREAMING_DEVICE, "for alice 3")
        .await;

    // A restart of mock-ens keeps registrations, states and notifications, and resubscribes.
    stand.restart_ens().await;
    let view = stand.device(PUSH_DEVICE).await;
    assert_eq!(view.state, DeviceState::Active);
    assert!(view.notifications.iter().any(|n| n.subject == "for bob 3"));
    // Streaming subscriptions have no watermark: mail is watched again once resubscribed.
    stand.wait_for_subscription(STREAMING_DEVICE).await;
    stand
        .exchange
        .server
        .deliver(ALICE, "after restart")
        .unwrap();
    stand
        .wait_for_notification(STREAMING_DEVICE, "after restart")
        .await;
    eprintln!(
        "blocked in mock-ens after the wipe: push {blocked_after:?}, streaming {streaming_blocked_after:?}"
    );
}

#[tokio::test]
async fn registration_api_requires_the_token_and_valid_bodies() {
    let stand = Stand::start().await;
    let (status, _) = stand.api(Method::GET, "/devices", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = stand
        .api(
            Method::GET,
            "/devices",
            Some("wrong-token-0123456789"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = stand.api(Method::GET, "/alive", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = stand
        .api(
            Method::POST,
            "/devices",
            Some(API_TOKEN),
            Some(
                serde_json::json!({"device_id": "X", "user": ALICE, "mode": "fax",
                "auth": {"basic": {"user": ALICE, "password": "pw"}}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("mode"), "{body}");
    let (status, _) = stand
        .api(Method::GET, "/devices/NOPE", Some(API_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = stand
        .api(Method::DELETE, "/devices/NOPE", Some(API_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn credentials_are_not_stored_in_the_clear_and_push_urls_carry_no_credentials() {
    let stand = Stand::start().await;
    stand.register(PUSH_DEVICE, BOB, "push").await;
    stand.wait_for_subscriptions(1).await;
    let store = std::fs::read(&stand.ens_config.store).unwrap();
    // The password as registered and as it travels (Basic's base64), and the API token.
    let basic = encode_base64(format!("{BOB}:{TEST_PASSWORD}").as_bytes());
    for (what, needle) in [
        ("the password", TEST_PASSWORD),
        ("the Basic credentials", basic.as_str()),
        ("the API token", API_TOKEN),
    ] {
        let needle = needle.as_bytes();
        assert!(
            !store.windows(needle.len()).any(|w| w == needle),
            "{what} is in the store in the clear"
        );
    }
    let (status, listed) = stand
        .api(Method::GET, "/devices", Some(API_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert!(listed.contains(PUSH_DEVICE), "{listed}");
    for needle in [TEST_PASSWORD, basic.as_str(), API_TOKEN] {
        assert!(
            !listed.contains(needle),
            "the device list shows a secret: {listed}"
        );
    }
    let subscribe = stand
        .exchange
        .server
        .requests()
        .into_iter()
        .find(|r| r.operation.as_deref() == Some("Subscribe"))
        .expect("a Subscribe reached Exchange");
    let body = String::from_utf8_lossy(&subscribe.body).into_owned();
    let url = harness::xml_text(&body, "URL").expect("a push URL");
    assert!(url.starts_with(&format!("http://{}/push/", stand.ens_config.listen)));
    assert!(!url.contains(BOB) && !url.contains(TEST_PASSWORD), "{url}");
}

#[tokio::test]
async fn a_blocked_device_stays_blocked_across_a_restart_until_allowed() {
    let mut stand = Stand::start().await;
    stand.register(STREAMING_DEVICE, ALICE, "streaming").await;
    stand.wait_for_subscriptions(1).await;
    // The list shows whether each device is subscribed (the scale benchmark waits on it).
    wait_until(STEP, "the list to show EASDEV1 subscribed", || async {
        let (status, body) = stand
            .api(Method::GET, "/devices", Some(API_TOKEN), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let list: Vec<DeviceSummary> = serde_json::from_str(&body).unwrap();
        list.len() == 1 && list[0].device_id == STREAMING_DEVICE && list[0].subscribed
    })
    .await
    .unwrap();
    stand
        .uem
        .update(STREAMING_DEVICE, Change::DeviceWipe)
        .unwrap();
    stand
        .wait_for_state(STREAMING_DEVICE, DeviceState::Blocked, STEP)
        .await;

    stand.restart_ens().await;
    let view = stand.device(STREAMING_DEVICE).await;
    assert_eq!(view.state, DeviceState::Blocked);
    assert_eq!(view.reason.as_deref(), Some("device-wiped"));

    stand
        .uem
        .update(STREAMING_DEVICE, Change::Compliant)
        .unwrap();
    stand
        .wait_for_state(STREAMING_DEVICE, DeviceState::Active, STEP)
        .await;
    stand
        .exchange
        .server
        .deliver(ALICE, "welcome back")
        .unwrap();
    stand
        .wait_for_notification(STREAMING_DEVICE, "welcome back")
        .await;
}

/// The registration body of a device presenting `cert` as its client certificate.
fn certificate_auth(cert: &seg_testbed::pki::ClientCert) -> serde_json::Value {
    serde_json::json!({"certificate": {"cert_pem": cert.cert_pem, "key_pem": cert.key_pem}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_device_is_notified_through_kcd_and_stops_when_wiped() {
    let kdc = start_kdc().await;
    let stand = Stand::start_with(Some(&kdc)).await;
    let cert = stand
        .exchange
        .pki
        .issue_client_cert(&ClientCertSpec::upn("alice@TEST.LOCAL"))
        .unwrap();
    let (status, body) = stand
        .register_with(
            STREAMING_DEVICE,
            ALICE,
            "streaming",
            certificate_auth(&cert),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    stand.wait_for_subscriptions(1).await;

    stand
        .exchange
        .server
        .deliver(ALICE, "for alice's certificate")
        .unwrap();
    stand
        .wait_for_notification(STREAMING_DEVICE, "for alice's certificate")
        .await;

    // Exchange served the subscription, the stream and the preview as alice, by the Kerberos
    // ticket the gateway obtained for her certificate; ENS sent no credentials of its own.
    let requests = stand.exchange.server.requests();
    for operation in ["Subscribe", "GetStreamingEvents", "GetItem"] {
        assert!(
            requests
                .iter()
                .any(|r| r.operation.as_deref() == Some(operation)
                    && r.authenticated_user.as_deref() == Some(ALICE)),
            "no {operation} authenticated as {ALICE}"
        );
    }
    for request in &requests {
        let authorization = request
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|value| value.to_str().unwrap().to_owned());
        assert!(
            authorization
                .as_deref()
                .is_none_or(|value| value.starts_with("Negotiate ")),
            "{:?} reached Exchange with {authorization:?}",
            request.operation
        );
    }
    // The private key is sealed in the store like a password.
    let store = std::fs::read(&stand.ens_config.store).unwrap();
    let key_line = cert
        .key_pem
        .lines()
        .nth(1)
        .expect("a base64 line of the key");
    assert!(
        !store
            .windows(key_line.len())
            .any(|w| w == key_line.as_bytes()),
        "the private key is in the store in the clear"
    );

    // UEM wipes the device: its stream through the gateway is cut and mock-ens blocks it.
    stand
        .uem
        .update(STREAMING_DEVICE, Change::EnterpriseWipe)
        .unwrap();
    stand
        .wait_for_state(
            STREAMING_DEVICE,
            DeviceState::Blocked,
            Duration::from_secs(1),
        )
        .await;
    assert_eq!(
        stand.device(STREAMING_DEVICE).await.reason.as_deref(),
        Some("enterprise-wiped")
    );
    stand.exchange.server.deliver(ALICE, "while wiped").unwrap();

    // Compliant again: it subscribes anew with its certificate and is notified again; the mail
    // that came while it was blocked was never turned into a notification.
    stand
        .uem
        .update(STREAMING_DEVICE, Change::Compliant)
        .unwrap();
    stand
        .wait_for_state(STREAMING_DEVICE, DeviceState::Active, STEP)
        .await;
    stand.wait_for_subscription(STREAMING_DEVICE).await;
    stand.exchange.server.deliver(ALICE, "back again").unwrap();
    stand
        .wait_for_notification(STREAMING_DEVICE, "back again")
        .await;
    let subjects: Vec<String> = stand
        .device(STREAMING_DEVICE)
        .await
        .notifications
        .into_iter()
        .map(|n| n.subject)
        .collect();
    assert_eq!(subjects, ["for alice's certificate", "back again"]);
    drop(stand);
    stop_kdc(kdc).await;
}

#[tokio::test]
async fn a_certificate_whose_key_does_not_fit_is_refused_at_registration() {
    let stand = Stand::start().await;
    let pki = &stand.exchange.pki;
    let cert = pki
        .issue_client_cert(&ClientCertSpec::upn("alice@TEST.LOCAL"))
        .unwrap();
    let other = pki
        .issue_client_cert(&ClientCertSpec::upn("bob@TEST.LOCAL"))
        .unwrap();
    let mismatched = serde_json::json!({"certificate": {
        "cert_pem": cert.cert_pem, "key_pem": other.key_pem}});
    let (status, body) = stand
        .register_with(STREAMING_DEVICE, ALICE, "streaming", mismatched)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("the key does not fit the certificate"),
        "{body}"
    );
    let (status, _) = stand
        .api(Method::GET, "/devices/EASDEV1", Some(API_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_certificate_device_over_plain_http_is_in_error_not_active() {
    let stand = Stand::start().await;
    let cert = stand
        .exchange
        .pki
        .issue_client_cert(&ClientCertSpec::upn("alice@TEST.LOCAL"))
        .unwrap();
    let (status, body) = stand
        .register_with(
            STREAMING_DEVICE,
            ALICE,
            "streaming",
            certificate_auth(&cert),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    stand
        .wait_for_state(STREAMING_DEVICE, DeviceState::Error, STEP)
        .await;
    let view = stand.device(STREAMING_DEVICE).await;
    assert_eq!(
        view.reason.as_deref(),
        Some("a certificate device needs an https:// gateway_url")
    );
    assert_eq!(stand.exchange.server.subscription_count(), 0);
}
