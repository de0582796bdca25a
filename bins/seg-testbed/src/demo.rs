//! `seg-testbed demo`: the end-to-end story on loopback, step by step.
//!
//! A test Exchange server and the seg-proxy gateway start over TLS; a mailbox is read, a
//! streaming subscription opened and a mail delivered, all through the gateway, and the
//! notification is shown arriving through it chunk by chunk. Later slices add the compliance
//! block (a wiped device's stream cut, its next request refused) and the mock ENS2.

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use seg_proxy::Gateway;
use seg_proxy::config::{Config, TlsFiles};
use seg_testbed::harness::{self, TEST_PASSWORD, TestExchange};
use std::fmt::Write as _;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long any one step may take before the demo gives up.
const STEP: Duration = Duration::from_secs(15);

const USER: &str = "alice@test.local";

/// What the demo saw, for its test.
#[derive(Debug)]
pub struct Outcome {
    /// The subject of the message fetched through the gateway.
    pub subject: String,
    /// EWS operations Exchange received with the gateway's `X-Forwarded-For`.
    pub forwarded_operations: Vec<String>,
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

    say("2. Starting seg-proxy over TLS, EWS proxying on, trusting the test CA for Exchange");
    let mut config = Config::default();
    config.listen.https = Some("127.0.0.1:0".parse()?);
    config.tls = Some(TlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
    });
    config.exchange.url = exchange.server.base_url();
    config.exchange.trust_store = Some(pki.ca.clone());
    config.ews.enable_proxy = true;
    let gateway = Gateway::start(config).await?;
    let https = gateway
        .https_addr()
        .ok_or("the gateway has no https listener")?;
    let ews_url = format!("https://localhost:{}/EWS/Exchange.asmx", https.port());
    say(&format!(
        "   seg-proxy listens on https://localhost:{}",
        https.port()
    ));
    let basic = harness::basic_auth(USER, TEST_PASSWORD);
    let through_gateway = |operation: &str| {
        harness::ews_request(
            &ews_url,
            Some(&basic),
            &[],
            harness::soap_envelope(operation),
        )
    };

    say("3. GetFolder (inbox) through the gateway");
    let response = exchange
        .client
        .send(through_gateway(r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>"#)?)
        .await?;
    let body = expect_ok(response, "GetFolder").await?;
    say(&format!(
        "   200 OK: folder {:?}, {} items",
        harness::xml_text(&body, "DisplayName").unwrap_or_default(),
        harness::xml_text(&body, "TotalCount").unwrap_or_default()
    ));

    say("4. Subscribe (streaming, NewMailEvent on the inbox) through the gateway");
    let response = exchange
        .client
        .send(through_gateway(r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#)?)
        .await?;
    let body = expect_ok(response, "Subscribe").await?;
    let subscription =
        harness::xml_text(&body, "SubscriptionId").ok_or("no SubscriptionId in the answer")?;
    say(&format!("   subscription {subscription}"));

    say("5. GetStreamingEvents through the gateway: a long-lived response, read chunk by chunk");
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

    say("6. A mail arrives in alice's mailbox (the test server's delivery endpoint)");
    let delivered = exchange.server.deliver(USER, "Quarterly numbers")?;
    say(&format!("   delivered item {}", delivered.id));

    say("7. The notification arrives through the gateway");
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
    drop(stream);

    say("8. GetItem through the gateway: the preview ENS would push to the device");
    let response = exchange
        .client
        .send(through_gateway(&format!(
            r#"<m:GetItem><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>"#
        ))?)
        .await?;
    let body = expect_ok(response, "GetItem").await?;
    let subject = harness::xml_text(&body, "Subject").ok_or("no Subject in the item")?;
    say(&format!("   subject: {subject:?}"));

    say("9. Unsubscribe through the gateway");
    let response = exchange
        .client
        .send(through_gateway(&format!(
            r#"<m:Unsubscribe><m:SubscriptionId>{subscription}</m:SubscriptionId></m:Unsubscribe>"#
        ))?)
        .await?;
    expect_ok(response, "Unsubscribe").await?;
    say("   done");

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
        "10. Exchange saw, each with the gateway's X-Forwarded-For:{seen}"
    ));

    gateway.shutdown().await;
    exchange.server.shutdown().await;
    say("Stopped seg-proxy (drained) and the test Exchange server.");
    Ok(Outcome {
        subject,
        forwarded_operations,
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
    async fn demo_delivers_the_notification_through_the_gateway() {
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
                "Unsubscribe"
            ]
        );
        assert!(
            narration
                .iter()
                .any(|line| line.contains("NewMailEvent for item"))
        );
    }
}
