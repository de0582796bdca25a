//! `seg-testbed demo`: the end-to-end story on loopback, step by step.
//!
//! A test Exchange server, a test UEM console and the seg-proxy gateway start, over TLS where
//! the real ones would use it. A compliant device's mailbox is read, a streaming subscription
//! opened and a mail delivered, all through the gateway; the notification arrives through it.
//! Then mock-ens, the ENS2 stand-in, registers two more devices through its API, a push one and
//! a streaming one, and records the notifications it would send them. UEM wipes the hand-held
//! device (its stream is cut, its next request refused with a reason ENS can read) and then the
//! push device, which Exchange calls directly: the gateway's callback makes mock-ens stop it at
//! once while the other device carries on. UEM marks both compliant again and they resume
//! without registering again; mock-ens restarts and keeps every registration and state.
//! Alice's tablet also shows certificate-based authentication: it presents a client
//! certificate and no password, and the gateway answers Exchange's Kerberos with a ticket from
//! a real MIT KDC by constrained delegation (KCD).
//! While it runs, the gateway's admin console is open at the address it prints.

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use mock_ens::MockEns;
use mock_ens::config::{Config as EnsConfig, SubscriptionTiming};
use seg_proxy::Gateway;
use seg_proxy::config::{ComplianceConfig, Config, TlsFiles};
use seg_testbed::client::HttpClient;
use seg_testbed::exchange::NegotiateConfig;
use seg_testbed::harness::{self, TEST_PASSWORD, TestExchange};
use seg_testbed::kdc::{EXCHANGE_SERVICE, GATEWAY_SERVICE, Kdc, KdcConfig};
use seg_testbed::pki::ClientCertSpec;
use seg_testbed::uem::{self, Change, Device, UemConfig, UemServer};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long any one step may take before the demo gives up.
const STEP: Duration = Duration::from_secs(15);

const USER: &str = "alice@test.local";
const DEVICE: &str = "EASDEV1";
const BOB: &str = "bob@test.local";
/// Bob's phone, registered with mock-ens for push: Exchange calls ENS directly.
const PUSH_DEVICE: &str = "EASDEV2";
/// Alice's tablet, registered with mock-ens for streaming through the gateway.
const STREAMING_DEVICE: &str = "EASDEV3";
const WEBHOOK_SECRET: &str = "demo-webhook-secret";
const ENS_API_TOKEN: &str = "demo-ens-api-token-0123456789";
/// The gateway's admin token: the admin API's bearer token, and the admin console's sign-in.
const ADMIN_TOKEN: &str = "demo-admin-token-0123456789";

/// What the demo saw, for its test.
#[derive(Debug)]
pub struct Outcome {
    /// The subject of the message fetched through the gateway.
    pub subject: String,
    /// Who Exchange served the certificate device's request as (by Kerberos).
    pub kerberos_user: Option<String>,
    /// EWS operations Exchange received with the gateway's `X-Forwarded-For`.
    pub forwarded_operations: Vec<String>,
    /// How long after the wipe the device's stream was cut.
    pub cut_after: Duration,
    /// The `X-Compliance-Status` of the refused request.
    pub refusal: String,
    /// The status of the first request after UEM marked the device compliant again.
    pub readmitted: StatusCode,
    /// The subjects mock-ens recorded for the push device, in order.
    pub push_notifications: Vec<String>,
    /// The subjects mock-ens recorded for the streaming device, in order.
    pub streaming_notifications: Vec<String>,
    /// How long after the push device's wipe mock-ens showed it blocked.
    pub push_blocked_after: Duration,
    /// The push device's state and reason in mock-ens right after its wipe.
    pub push_blocked: (String, Option<String>),
    /// The push device's state after mock-ens restarted.
    pub state_after_restart: String,
}

/// Runs the demo, narrating to `say`.
pub async fn run(mut say: impl FnMut(&str)) -> Result<Outcome, BoxError> {
    let dir = tempfile::tempdir()?;
    say(
        "1. Starting a Kerberos KDC (MIT, realm TEST.LOCAL) and the test Exchange server (TLS, EWS at /EWS/Exchange.asmx, Basic and Kerberos) with user alice@test.local",
    );
    let kdc = tokio::task::spawn_blocking(|| Kdc::start(KdcConfig::temporary())).await??;
    let exchange_keytab = kdc
        .keytab(EXCHANGE_SERVICE)
        .ok_or("the KDC made no keytab for Exchange")?
        .to_path_buf();
    let mut exchange = TestExchange::start(|config| {
        // One EWS "minute" lasts a second here, so streams and heartbeats are quick to watch.
        config.minute = Duration::from_secs(1);
        config.keepalive_interval = Duration::from_secs(2);
        config.negotiate = Some(NegotiateConfig::new(exchange_keytab));
    })
    .await?;
    let pki = exchange.pki.write_to(dir.path())?.clone();
    say(&format!(
        "   Exchange listens on {}",
        exchange.server.base_url()
    ));

    say(
        "2. Starting the test UEM console: EASDEV1 (alice's iPhone), EASDEV2 (bob's phone) and EASDEV3 (alice's tablet), all enrolled and compliant",
    );
    let admin = harness::reserve_port()?;
    let ens_addr = harness::reserve_port()?;
    let mut uem_config = UemConfig::new(vec![
        Device::new(DEVICE, 1, USER),
        Device::new(PUSH_DEVICE, 2, BOB),
        Device::new(STREAMING_DEVICE, 3, USER),
    ]);
    uem_config.webhook = Some(uem::Webhook::new(
        &format!("http://{admin}/events/compliance"),
        WEBHOOK_SECRET,
    ));
    let uem = UemServer::spawn(harness::local_listener().await?, None, uem_config)?;
    say(&format!(
        "   UEM listens on {}; its change events go to the gateway's webhook",
        uem.base_url()
    ));

    say(
        "3. Starting seg-proxy over TLS (and plain HTTP on loopback for mock-ens): EWS proxying and compliance on, ENS callback configured, client certificates answered by KCD",
    );
    let mut config = Config::default();
    config.listen.https = Some("127.0.0.1:0".parse()?);
    config.listen.http = Some("127.0.0.1:0".parse()?);
    config.tls = Some(TlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
    });
    config.exchange.url = exchange.server.base_url();
    config.exchange.trust_store = Some(pki.ca.clone());
    config.ews.enable_proxy = true;
    config.auth.client_cert = ews_proxy_core::tls::ClientCertMode::Optional;
    config.auth.client_ca = Some(pki.ca.clone());
    config.auth.modes.push(seg_proxy::config::AuthMode::CbaKcd);
    let mut kcd = seg_proxy::config::Kcd::new(
        kdc.krb5_conf(),
        kdc.keytab(GATEWAY_SERVICE)
            .ok_or("the KDC made no keytab for the gateway")?,
        GATEWAY_SERVICE,
    );
    kcd.target_spn = Some(EXCHANGE_SERVICE.into());
    config.auth.kcd = Some(kcd);
    config.admin.listen = Some(admin);
    config.admin.token = Some(ADMIN_TOKEN.into());
    config.ens.callback_url = Some(format!("http://{ens_addr}/gateway/compliance"));
    config.compliance = Some(ComplianceConfig {
        uem_url: uem.base_url(),
        uem_tenant_code: uem.tenant_code().into(),
        uem_user: uem::DEFAULT_API_USER.into(),
        uem_password: uem::DEFAULT_API_PASSWORD.into(),
        uem_organization_group_id: None,
        uem_trust_store: None,
        uem_page_size: 500,
        uem_timeout: Duration::from_secs(10),
        device_id_header: "X-Device-Id".into(),
        snapshot: Some(dir.path().join("view.snapshot")),
        full_sync_interval: Duration::from_secs(3600),
        delta_sync_interval: Duration::from_secs(600),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        unknown_device: Default::default(),
        activesync_discovery: Default::default(),
        policy: Default::default(),
        backend: Default::default(),
        redis_url: None,
        redis_trust_store: None,
        redis_lock_ttl: std::time::Duration::from_secs(10),
        redis_key_prefix: "seg:compliance".into(),
        redis_full_sync_batch: 5_000,
        redis_not_ready_when_down: false,
    });
    let gateway = Gateway::start(config).await?;
    let https = gateway
        .https_addr()
        .ok_or("the gateway has no https listener")?;
    let ews_url = format!("https://localhost:{}/EWS/Exchange.asmx", https.port());
    let (compliance, _) = gateway.compliance().ok_or("compliance is not on")?.clone();
    harness::wait_until(STEP, "the first full sync from UEM", || {
        let loaded = compliance.view().is_loaded();
        async move { loaded }
    })
    .await?;
    say(&format!(
        "   seg-proxy listens on https://localhost:{}; full sync from UEM done: {} device(s)",
        https.port(),
        compliance.view().len()
    ));
    let console = format!("http://{admin}/ui/");
    let login = http::Request::get(format!("{console}login"))
        .body(http_body_util::Full::<Bytes>::default())?;
    let response = harness::within(
        STEP,
        "the console's sign-in page",
        exchange.client.send(login),
    )
    .await??;
    if response.status() == StatusCode::OK {
        say(&format!(
            "   The admin console is at {console} while the demo runs: sign in with the admin token {ADMIN_TOKEN}"
        ));
    }
    say(
        "   mock-ens, the ENS2 stand-in, starts: its registration API, push callback and gateway callback",
    );
    let http_gateway = gateway
        .http_addr()
        .ok_or("the gateway has no http listener")?;
    let ens_config = EnsConfig {
        listen: ens_addr,
        gateway_url: format!("http://{http_gateway}/EWS/Exchange.asmx"),
        gateway_trust_store: None,
        public_url: None,
        store: dir.path().join("ens.redb"),
        key_file: None,
        api_token: ENS_API_TOKEN.into(),
        device_id_header: "X-Device-Id".into(),
        subscriptions: SubscriptionTiming {
            status_frequency_minutes: 1,
            minute: Duration::from_secs(1),
            streaming_connection_minutes: 30,
            pull_interval: Duration::from_millis(500),
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        },
    };
    let mut ens = MockEns::start(ens_config.clone()).await?;
    let api = EnsApi::new(ens_addr);
    say(&format!(
        "   mock-ens listens on {ens_addr}; it reaches Exchange only through the gateway, and Exchange pushes to it directly"
    ));

    let basic = harness::basic_auth(USER, TEST_PASSWORD);
    let through_gateway = |operation: &str| {
        harness::ews_request(
            &ews_url,
            Some(&basic),
            &[("X-Device-Id", DEVICE)],
            harness::soap_envelope(operation),
        )
    };

    say("4. GetFolder (inbox) through the gateway, as ENS does for device EASDEV1");
    let response = exchange.client.send(through_gateway(r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#)?).await?;
    let body = expect_ok(response, "GetFolder").await?;
    say(&format!(
        "   200 OK: folder {:?}, {} items",
        harness::xml_text(&body, "DisplayName").unwrap_or_default(),
        harness::xml_text(&body, "TotalCount").unwrap_or_default()
    ));

    say(
        "5. Alice's tablet (EASDEV3) presents a client certificate (UPN alice@TEST.LOCAL) and no password: the gateway gets a ticket by KCD (S4U2Self + S4U2Proxy)",
    );
    let certificate = exchange
        .pki
        .issue_client_cert(&ClientCertSpec::upn("alice@TEST.LOCAL"))?;
    let tablet = HttpClient::with_config(certificate.client_config(exchange.pki.root_store())?);
    let before = exchange.server.requests().len();
    let request = harness::ews_request(
        &ews_url,
        None,
        &[("X-Device-Id", STREAMING_DEVICE)],
        harness::soap_envelope(
            r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#,
        ),
    )?;
    let response = harness::within(
        STEP,
        "the certificate device's GetFolder",
        tablet.send(request),
    )
    .await??;
    expect_ok(response, "GetFolder with a certificate").await?;
    let kerberos_user = exchange
        .server
        .requests()
        .get(before..)
        .and_then(|requests| requests.iter().find_map(|r| r.authenticated_user.clone()));
    say(&format!(
        "   200 OK: Exchange accepted Authorization: Negotiate (Kerberos) as {}",
        kerberos_user.as_deref().unwrap_or("nobody")
    ));

    say("6. Subscribe (streaming, NewMailEvent on the inbox) through the gateway");
    let subscribe = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;
    let response = exchange.client.send(through_gateway(subscribe)?).await?;
    let body = expect_ok(response, "Subscribe").await?;
    let subscription =
        harness::xml_text(&body, "SubscriptionId").ok_or("no SubscriptionId in the answer")?;
    say(&format!("   subscription {subscription}"));

    say("7. GetStreamingEvents through the gateway: a long-lived response, read chunk by chunk");
    let request = through_gateway(&format!(
        r#"<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{subscription}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents>"#
    ))?;
    let response =
        harness::within(STEP, "the stream's headers", exchange.client.send(request)).await??;
    if response.status() != StatusCode::OK {
        return Err(format!("GetStreamingEvents answered {}", response.status()).into());
    }
    let mut stream = response.into_body();
    say("   stream open");

    say("8. A mail arrives in alice's mailbox (the test server's delivery endpoint)");
    let delivered = exchange.server.deliver(USER, "Quarterly numbers")?;
    say(&format!("   delivered item {}", delivered.id));

    say("9. The notification arrives through the gateway");
    let item_id = loop {
        let chunk: Bytes = harness::next_chunk(&mut stream, STEP, "a notification chunk")
            .await?
            .ok_or("the stream ended before the notification")?;
        let text = String::from_utf8_lossy(&chunk);
        if let Some(item) = harness::xml_attribute(&text, "ItemId", "Id") {
            say(&format!(
                "   chunk of {} bytes: NewMailEvent for item {item}",
                chunk.len()
            ));
            break item;
        }
        say(&format!(
            "   chunk of {} bytes: {}",
            chunk.len(),
            summary(&text)
        ));
    };

    say("10. GetItem through the gateway: the preview ENS would push to the device");
    let response = exchange.client.send(through_gateway(&format!(
        r#"<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>"#
    ))?).await?;
    let body = expect_ok(response, "GetItem").await?;
    let subject = harness::xml_text(&body, "Subject").ok_or("no Subject in the item")?;
    say(&format!("   subject: {subject:?}"));

    say("11. The device is enterprise-wiped in UEM (the device itself says nothing)");
    let wiped_at = Instant::now();
    uem.update(DEVICE, Change::EnterpriseWipe)?;
    let cut = harness::within(STEP, "the stream to be cut", async {
        loop {
            match harness::next_chunk(&mut stream, STEP, "the stream").await {
                Ok(Some(_)) => continue, // keep-alives already on their way
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    let cut_after = wiped_at.elapsed();
    cut?;
    say(&format!(
        "   UEM posted the change event; the gateway cut the open stream {cut_after:.0?} after the wipe"
    ));

    say("12. ENS retries: Subscribe through the gateway");
    let before = exchange.server.requests().len();
    let response = exchange.client.send(through_gateway(subscribe)?).await?;
    let status = response.status();
    let refusal = response
        .headers()
        .get("x-compliance-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let fault = harness::within(
        STEP,
        "the refusal",
        harness::body_text(response.into_body()),
    )
    .await??;
    say(&format!(
        "   {status}, X-Compliance-Status: {refusal}, SOAP fault {}",
        harness::xml_text(&fault, "ResponseCode").unwrap_or_default()
    ));
    let reached = exchange.server.requests().len() - before;
    say(&format!(
        "   requests of the blocked device that reached Exchange: {reached}"
    ));

    say("13. UEM marks EASDEV1 compliant again; its next Subscribe passes");
    uem.update(DEVICE, Change::Compliant)?;
    let readmitted = wait_for_status(&exchange.client, || through_gateway(subscribe)).await?;
    say(&format!("   Subscribe: {readmitted}"));

    say("14. Registering bob's phone (push) and alice's tablet (streaming) with mock-ens");
    let before = exchange.server.subscription_count();
    for (device, user, mode) in [
        (PUSH_DEVICE, BOB, "push"),
        (STREAMING_DEVICE, USER, "streaming"),
    ] {
        let answer = api.register(device, user, mode).await?;
        say(&format!("   POST /devices {device} ({mode}): {answer}"));
    }
    harness::wait_until(STEP, "both subscriptions at Exchange", || {
        let count = exchange.server.subscription_count();
        async move { count >= before + 2 }
    })
    .await?;

    say(
        "15. Mail for bob and for alice: mock-ens fetches each preview with GetItem through the gateway",
    );
    exchange.server.deliver(BOB, "Team lunch")?;
    exchange.server.deliver(USER, "Board minutes")?;
    api.wait_for_notification(PUSH_DEVICE, "Team lunch").await?;
    api.wait_for_notification(STREAMING_DEVICE, "Board minutes")
        .await?;
    say(
        "   EASDEV2 notified: \"Team lunch\" (push); EASDEV3 notified: \"Board minutes\" (streaming)",
    );

    say("16. UEM enterprise-wipes bob's phone; Exchange would keep pushing to ENS directly");
    let wiped_at = Instant::now();
    uem.update(PUSH_DEVICE, Change::EnterpriseWipe)?;
    api.wait_for_state(PUSH_DEVICE, "blocked").await?;
    let push_blocked_after = wiped_at.elapsed();
    let view = api.device(PUSH_DEVICE).await?;
    let push_blocked = (
        view["state"].as_str().unwrap_or_default().to_owned(),
        view["reason"].as_str().map(str::to_owned),
    );
    say(&format!(
        "   the gateway told mock-ens; EASDEV2 is {} ({}) {push_blocked_after:.0?} after the wipe",
        push_blocked.0,
        push_blocked.1.as_deref().unwrap_or("no reason")
    ));
    exchange.server.deliver(BOB, "Salary review")?;
    exchange.server.deliver(USER, "Roadmap")?;
    api.wait_for_notification(STREAMING_DEVICE, "Roadmap")
        .await?;
    harness::wait_until(STEP, "bob's push subscription to end", || {
        let count = exchange.server.subscription_count();
        async move { count <= before + 1 }
    })
    .await?;
    say(
        "   Exchange pushed bob's new mail; mock-ens answered Unsubscribe and fetched nothing; alice's tablet was notified of \"Roadmap\"",
    );

    say(
        "17. UEM marks bob's phone compliant again: mock-ens resubscribes without a new registration",
    );
    uem.update(PUSH_DEVICE, Change::Compliant)?;
    api.wait_for_state(PUSH_DEVICE, "active").await?;
    harness::wait_until(STEP, "bob's new push subscription", || {
        let count = exchange.server.subscription_count();
        async move { count >= before + 2 }
    })
    .await?;
    exchange.server.deliver(BOB, "Welcome back")?;
    api.wait_for_notification(PUSH_DEVICE, "Welcome back")
        .await?;
    say("   EASDEV2 is active again and notified: \"Welcome back\"");

    say("18. mock-ens restarts: registrations, states and notifications come back from its store");
    ens.shutdown().await;
    ens = MockEns::start(ens_config).await?;
    let view = api.device(PUSH_DEVICE).await?;
    let state_after_restart = view["state"].as_str().unwrap_or_default().to_owned();
    // Streaming subscriptions have no watermark: mail is watched again once the new
    // subscription exists.
    api.wait_for_subscription(STREAMING_DEVICE).await?;
    exchange.server.deliver(USER, "After the restart")?;
    api.wait_for_notification(STREAMING_DEVICE, "After the restart")
        .await?;
    say(&format!(
        "   EASDEV2 is {state_after_restart} with {} notification(s) kept; EASDEV3 notified: \"After the restart\"",
        view["notifications"].as_array().map_or(0, Vec::len)
    ));
    let push_notifications = api.subjects(PUSH_DEVICE).await?;
    let streaming_notifications = api.subjects(STREAMING_DEVICE).await?;

    let forwarded_operations: Vec<String> = exchange
        .server
        .requests()
        .into_iter()
        .filter(|request| request.headers.contains_key("x-forwarded-for"))
        .filter(|request| {
            request
                .headers
                .get("x-device-id")
                .is_some_and(|d| d == DEVICE)
        })
        .filter_map(|request| request.operation)
        .collect();
    let mut seen = String::new();
    for operation in &forwarded_operations {
        let _ = write!(seen, " {operation}");
    }
    say(&format!(
        "19. Exchange saw from EASDEV1, each with the gateway's X-Forwarded-For:{seen}"
    ));

    ens.shutdown().await;
    gateway.shutdown().await;
    exchange.server.shutdown().await;
    uem.shutdown().await;
    tokio::task::spawn_blocking(move || drop(kdc)).await?;
    say(
        "Stopped mock-ens, seg-proxy (drained), the test UEM, the test Exchange server and the KDC.",
    );
    Ok(Outcome {
        subject,
        kerberos_user,
        forwarded_operations,
        cut_after,
        refusal,
        readmitted,
        push_notifications,
        streaming_notifications,
        push_blocked_after,
        push_blocked,
        state_after_restart,
    })
}

/// Sends the request `build` makes until it is answered 200 (the gateway applies UEM's change a
/// moment after UEM makes it), within [`STEP`]; refused attempts never reach Exchange.
async fn wait_for_status(
    client: &HttpClient,
    build: impl Fn() -> seg_testbed::Result<http::Request<http_body_util::Full<Bytes>>>,
) -> Result<StatusCode, BoxError> {
    let answered = std::sync::Mutex::new(None);
    harness::wait_until(STEP, "a 200 after the unblock", || {
        let request = build();
        let answered = &answered;
        async move {
            let Ok(request) = request else { return false };
            match client.send(request).await {
                Ok(response) if response.status() == StatusCode::OK => {
                    *answered.lock().unwrap_or_else(|e| e.into_inner()) = Some(response);
                    true
                }
                _ => false,
            }
        }
    })
    .await?;
    let response = answered
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or("no answer was kept")?;
    let status = response.status();
    expect_ok(response, "Subscribe after the unblock").await?;
    Ok(status)
}

/// mock-ens's registration API, as an ENS operator's tooling would call it.
struct EnsApi {
    base: String,
    client: HttpClient,
}

impl EnsApi {
    fn new(addr: std::net::SocketAddr) -> Self {
        EnsApi {
            base: format!("http://{addr}"),
            client: HttpClient::accepting_any_certificate(),
        }
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, String), BoxError> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("ApiToken", ENS_API_TOKEN)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))?;
        let response = self.client.send(request).await?;
        let status = response.status();
        let text = harness::within(STEP, path, harness::body_text(response.into_body())).await??;
        Ok((status, text))
    }

    async fn register(&self, device: &str, user: &str, mode: &str) -> Result<String, BoxError> {
        let body = serde_json::json!({
            "device_id": device, "user": user, "mailbox": user, "mode": mode,
            "auth": {"basic": {"user": user, "password": TEST_PASSWORD}},
        });
        let (status, text) = self
            .call(http::Method::POST, "/devices", Some(body))
            .await?;
        if status != StatusCode::CREATED {
            return Err(format!("registering {device}: {status} {text}").into());
        }
        Ok(format!("{status} {text}"))
    }

    async fn device(&self, device: &str) -> Result<serde_json::Value, BoxError> {
        let (status, text) = self
            .call(http::Method::GET, &format!("/devices/{device}"), None)
            .await?;
        if status != StatusCode::OK {
            return Err(format!("GET /devices/{device}: {status} {text}").into());
        }
        Ok(serde_json::from_str(&text)?)
    }

    async fn subjects(&self, device: &str) -> Result<Vec<String>, BoxError> {
        let view = self.device(device).await?;
        Ok(view["notifications"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|n| n["subject"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn wait_for_state(&self, device: &str, state: &str) -> Result<(), BoxError> {
        harness::wait_until(STEP, &format!("{device} to be {state}"), || async move {
            matches!(self.device(device).await, Ok(view) if view["state"] == state)
        })
        .await?;
        Ok(())
    }

    async fn wait_for_subscription(&self, device: &str) -> Result<(), BoxError> {
        harness::wait_until(STEP, &format!("{device} to subscribe"), || async move {
            matches!(self.device(device).await, Ok(view) if view["subscription_id"].is_string())
        })
        .await?;
        Ok(())
    }

    async fn wait_for_notification(&self, device: &str, subject: &str) -> Result<(), BoxError> {
        harness::wait_until(
            STEP,
            &format!("{device} to be notified of {subject:?}"),
            || async move {
                matches!(self.subjects(device).await, Ok(subjects) if subjects.iter().any(|s| s == subject))
            },
        )
        .await?;
        Ok(())
    }
}

async fn expect_ok(response: Response<Incoming>, operation: &str) -> Result<String, BoxError> {
    let status = response.status();
    let body = harness::within(STEP, operation, harness::body_text(response.into_body())).await??;
    if status != StatusCode::OK || !body.contains(r#"ResponseClass="Success""#) {
        return Err(format!("{operation} failed with {status}: {body}").into());
    }
    Ok(body)
}

fn summary(chunk: &str) -> String {
    match harness::xml_text(chunk, "ConnectionStatus") {
        Some(status) => format!("ConnectionStatus {status} (keep-alive)"),
        None => "notification without a new item".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn demo_tells_the_whole_story() {
        let mut narration = Vec::new();
        let outcome = run(|line| narration.push(line.to_owned())).await.unwrap();
        assert_eq!(outcome.subject, "Quarterly numbers");
        assert_eq!(outcome.kerberos_user.as_deref(), Some("alice@test.local"));
        assert_eq!(
            outcome.forwarded_operations,
            [
                "GetFolder",
                "Subscribe",
                "GetStreamingEvents",
                "GetItem",
                "Subscribe"
            ]
        );
        assert!(
            outcome.cut_after < Duration::from_secs(1),
            "{:?}",
            outcome.cut_after
        );
        assert_eq!(outcome.refusal, "blocked; reason=enterprise-wiped");
        assert_eq!(outcome.readmitted, StatusCode::OK);
        assert_eq!(
            outcome.push_blocked,
            ("blocked".to_owned(), Some("enterprise-wiped".to_owned()))
        );
        assert!(
            outcome.push_blocked_after < Duration::from_secs(1),
            "{:?}",
            outcome.push_blocked_after
        );
        assert_eq!(outcome.push_notifications, ["Team lunch", "Welcome back"]);
        assert_eq!(
            outcome.streaming_notifications,
            ["Board minutes", "Roadmap", "After the restart"]
        );
        assert_eq!(outcome.state_after_restart, "active");
        assert!(
            narration
                .iter()
                .any(|line| line.contains("NewMailEvent for item"))
        );
        assert!(
            narration
                .iter()
                .any(|line| line.contains("/ui/") && line.contains("sign in with the admin token")),
            "{narration:?}"
        );
    }
}
