//! `seg-testbed demo`: the end-to-end story on loopback, step by step.
//!
//! A test Exchange server, a test UEM console and the seg-proxy gateway start, over TLS where
//! the real ones would use it. A compliant device's mailbox is read, a streaming subscription
//! opened and a mail delivered, all through the gateway; the notification arrives through it.
//! Then UEM wipes the device: its stream is cut, its next request refused with a reason ENS can
//! read, and ENS's callback told; UEM marks it compliant again and it passes. The mock ENS2
//! joins the story with its own issue.

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use seg_proxy::Gateway;
use seg_proxy::config::{ComplianceConfig, Config, TlsFiles};
use seg_testbed::harness::{self, TEST_PASSWORD, TestExchange};
use seg_testbed::uem::{self, Change, Device, UemConfig, UemServer, WebhookReceiver};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long any one step may take before the demo gives up.
const STEP: Duration = Duration::from_secs(15);

const USER: &str = "alice@test.local";
const DEVICE: &str = "EASDEV1";
const WEBHOOK_SECRET: &str = "demo-webhook-secret";

/// What the demo saw, for its test.
#[derive(Debug)]
pub struct Outcome {
    /// The subject of the message fetched through the gateway.
    pub subject: String,
    /// EWS operations Exchange received with the gateway's `X-Forwarded-For`.
    pub forwarded_operations: Vec<String>,
    /// How long after the wipe the device's stream was cut.
    pub cut_after: Duration,
    /// The `X-Compliance-Status` of the refused request.
    pub refusal: String,
    /// The bodies ENS's callback received, in order.
    pub callbacks: Vec<String>,
    /// The status of the first request after UEM marked the device compliant again.
    pub readmitted: StatusCode,
}

/// Runs the demo, narrating to `say`.
pub async fn run(mut say: impl FnMut(&str)) -> Result<Outcome, BoxError> {
    let dir = tempfile::tempdir()?;
    say(
        "1. Starting the test Exchange server (TLS, EWS at /EWS/Exchange.asmx) with user alice@test.local",
    );
    let mut exchange = TestExchange::start(|config| {
        // One EWS "minute" lasts a second here, so streams and heartbeats are quick to watch.
        config.minute = Duration::from_secs(1);
        config.keepalive_interval = Duration::from_secs(2);
    })
    .await?;
    let pki = exchange.pki.write_to(dir.path())?.clone();
    say(&format!(
        "   Exchange listens on {}",
        exchange.server.base_url()
    ));

    say("2. Starting the test UEM console: device EASDEV1 (alice's iPhone) enrolled and compliant");
    let ens = WebhookReceiver::start().await?;
    let admin = harness::reserve_port()?;
    let mut uem_config = UemConfig::new(vec![Device::new(DEVICE, 1, USER)]);
    uem_config.webhook = Some(uem::Webhook::new(
        &format!("http://{admin}/events/compliance"),
        WEBHOOK_SECRET,
    ));
    let uem = UemServer::spawn(harness::local_listener().await?, None, uem_config)?;
    say(&format!(
        "   UEM listens on {}; its change events go to the gateway's webhook",
        uem.base_url()
    ));

    say("3. Starting seg-proxy over TLS: EWS proxying and compliance on, ENS callback configured");
    let mut config = Config::default();
    config.listen.https = Some("127.0.0.1:0".parse()?);
    config.tls = Some(TlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
    });
    config.exchange.url = exchange.server.base_url();
    config.exchange.trust_store = Some(pki.ca.clone());
    config.ews.enable_proxy = true;
    config.admin.listen = Some(admin);
    config.ens.callback_url = Some(format!("{}/gateway/compliance", ens.url()));
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
        policy: Default::default(),
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

    say("5. Subscribe (streaming, NewMailEvent on the inbox) through the gateway");
    let subscribe = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;
    let response = exchange.client.send(through_gateway(subscribe)?).await?;
    let body = expect_ok(response, "Subscribe").await?;
    let subscription =
        harness::xml_text(&body, "SubscriptionId").ok_or("no SubscriptionId in the answer")?;
    say(&format!("   subscription {subscription}"));

    say("6. GetStreamingEvents through the gateway: a long-lived response, read chunk by chunk");
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

    say("7. A mail arrives in alice's mailbox (the test server's delivery endpoint)");
    let delivered = exchange.server.deliver(USER, "Quarterly numbers")?;
    say(&format!("   delivered item {}", delivered.id));

    say("8. The notification arrives through the gateway");
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

    say("9. GetItem through the gateway: the preview ENS would push to the device");
    let response = exchange.client.send(through_gateway(&format!(
        r#"<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>"#
    ))?).await?;
    let body = expect_ok(response, "GetItem").await?;
    let subject = harness::xml_text(&body, "Subject").ok_or("no Subject in the item")?;
    say(&format!("   subject: {subject:?}"));

    say("10. The device is enterprise-wiped in UEM (the device itself says nothing)");
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

    say("11. ENS retries: Subscribe through the gateway");
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

    say("12. ENS's callback was told, so it stops the device's push subscription at once");
    harness::wait_until(STEP, "the block callback", || {
        let told = !ens.received().is_empty();
        async move { told }
    })
    .await?;
    let mut callbacks: Vec<String> = ens
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    say(&format!("   POST /gateway/compliance {}", callbacks[0]));

    say("13. UEM marks the device compliant again; ENS's next Subscribe passes");
    uem.update(DEVICE, Change::Compliant)?;
    harness::wait_until(STEP, "the unblock callback", || {
        let told = ens.received().len() >= 2;
        async move { told }
    })
    .await?;
    callbacks = ens
        .received()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    say(&format!("   POST /gateway/compliance {}", callbacks[1]));
    let response = exchange.client.send(through_gateway(subscribe)?).await?;
    let readmitted = response.status();
    expect_ok(response, "Subscribe after the unblock").await?;
    say(&format!("   Subscribe: {readmitted}"));

    let forwarded_operations: Vec<String> = exchange
        .server
        .requests()
        .into_iter()
        .filter(|request| request.headers.contains_key("x-forwarded-for"))
        .filter_map(|request| request.operation)
        .collect();
    let mut seen = String::new();
    for operation in &forwarded_operations {
        let _ = write!(seen, " {operation}");
    }
    say(&format!(
        "14. Exchange saw, each with the gateway's X-Forwarded-For:{seen}"
    ));

    gateway.shutdown().await;
    exchange.server.shutdown().await;
    uem.shutdown().await;
    say("Stopped seg-proxy (drained), the test UEM and the test Exchange server.");
    Ok(Outcome {
        subject,
        forwarded_operations,
        cut_after,
        refusal,
        callbacks,
        readmitted,
    })
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
        assert_eq!(outcome.callbacks.len(), 2);
        assert!(
            outcome.callbacks[0].contains(r#""state":"blocked""#),
            "{:?}",
            outcome.callbacks
        );
        assert!(
            outcome.callbacks[1].contains(r#""state":"allowed""#),
            "{:?}",
            outcome.callbacks
        );
        assert_eq!(outcome.readmitted, StatusCode::OK);
        assert!(
            narration
                .iter()
                .any(|line| line.contains("NewMailEvent for item"))
        );
    }
}
