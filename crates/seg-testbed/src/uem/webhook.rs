//! Change events pushed to a webhook: signing, delivery with bounded retries, and the record of
//! every delivery.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http::{StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use rustls::RootCertStore;
use tokio::sync::{mpsc, watch};

use super::lock;
use crate::client::HttpClient;

/// The header carrying the shared secret itself.
pub const SECRET_HEADER: &str = "X-Seg-Webhook-Secret";
/// The header carrying `sha256=<lower-case hex HMAC-SHA256 of the raw body, keyed by the secret>`.
pub const SIGNATURE_HEADER: &str = "X-Seg-Signature";

/// Where change events go, and how hard the server tries.
#[derive(Clone)]
pub struct Webhook {
    /// The `http` or `https` URL events are POSTed to.
    pub url: String,
    /// The shared secret: sent in [`SECRET_HEADER`] and keying the [`SIGNATURE_HEADER`] HMAC.
    pub secret: String,
    /// Attempts per event, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles after each further failure.
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// How long one attempt may take, answer included.
    pub timeout: Duration,
    /// The roots trusted for an `https` URL; `None` accepts any certificate.
    pub roots: Option<RootCertStore>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Events to `url` signed with `secret`: 5 attempts, backoff from 100 ms doubling up to 2 s,
    /// 5 s per attempt, any certificate accepted.
    pub fn new(url: &str, secret: &str) -> Self {
        Self {
            url: url.to_string(),
            secret: secret.to_string(),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            roots: None,
        }
    }

    /// The wait after failed attempt number `attempt` (from 1).
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// The value of [`SIGNATURE_HEADER`] for `body`: `sha256=` and the lower-case hex HMAC-SHA256 of
/// the raw body keyed by `secret`.
///
/// ```
/// // RFC 4231 test case 2.
/// let signature = seg_testbed::uem::signature(b"Jefe", b"what do ya want for nothing?");
/// assert_eq!(signature, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
/// ```
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut text = String::with_capacity(7 + digest.len() * 2);
    text.push_str("sha256=");
    for byte in digest {
        text.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    text
}

/// One attempt to deliver an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttempt {
    /// The status answered, if the receiver answered.
    pub status: Option<StatusCode>,
    /// Why the attempt failed without an answer (connection refused, timeout…).
    pub error: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Queued or being retried.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
}

/// An event and what became of it.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    /// The event's `event_id`.
    pub event_id: String,
    /// The event's `event_type`, e.g. `device.wiped`.
    pub event_type: String,
    /// The EAS device id of the device concerned.
    pub device_id: String,
    /// The exact body POSTed.
    pub body: Bytes,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<WebhookAttempt>,
    /// Where it stands.
    pub outcome: DeliveryOutcome,
}

/// Queues events for the delivery task, in order.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: mpsc::UnboundedSender<usize>,
    pub(crate) deliveries: Arc<Mutex<Vec<WebhookDelivery>>>,
}

impl Outbox {
    /// Starts the task delivering events one after the other, until `shutdown`.
    pub(crate) fn start(webhook: Webhook, shutdown: watch::Receiver<bool>) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(deliver_all(webhook, jobs, deliveries.clone(), shutdown));
        Self { queue, deliveries }
    }

    /// Records and queues an event.
    pub(crate) fn send(&self, event_id: String, event_type: &str, device_id: &str, body: Bytes) {
        let mut deliveries = lock(&self.deliveries);
        deliveries.push(WebhookDelivery {
            event_id,
            event_type: event_type.to_string(),
            device_id: device_id.to_string(),
            body,
            attempts: Vec::new(),
            outcome: DeliveryOutcome::Pending,
        });
        let _ = self.queue.send(deliveries.len() - 1);
    }
}

async fn deliver_all(
    webhook: Webhook,
    mut jobs: mpsc::UnboundedReceiver<usize>,
    deliveries: Arc<Mutex<Vec<WebhookDelivery>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match &webhook.roots {
        Some(roots) => HttpClient::trusting(roots.clone()),
        None => HttpClient::accepting_any_certificate(),
    };
    let signing_key = webhook.secret.as_bytes();
    loop {
        let index = tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            job = jobs.recv() => match job {
                Some(index) => index,
                None => return,
            },
        };
        let Some(body) = lock(&deliveries).get(index).map(|d| d.body.clone()) else {
            continue;
        };
        let signed = signature(signing_key, &body);
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let result = tokio::select! {
                _ = shutdown.wait_for(|stopped| *stopped) => return,
                result = post_once(&client, &webhook, &signed, body.clone()) => result,
            };
            let delivered = matches!(result.status, Some(status) if status.is_success());
            if let Some(delivery) = lock(&deliveries).get_mut(index) {
                delivery.attempts.push(result);
            }
            if delivered {
                break DeliveryOutcome::Delivered;
            }
            if attempt >= webhook.max_attempts.max(1) {
                break DeliveryOutcome::Failed;
            }
            tokio::select! {
                _ = shutdown.wait_for(|stopped| *stopped) => return,
                _ = tokio::time::sleep(webhook.backoff(attempt)) => {}
            }
        };
        if outcome == DeliveryOutcome::Failed {
            tracing::warn!(url = %webhook.url, attempts = attempt, "change event not delivered");
        }
        if let Some(delivery) = lock(&deliveries).get_mut(index) {
            delivery.outcome = outcome;
        }
    }
}

async fn post_once(
    client: &HttpClient,
    webhook: &Webhook,
    signed: &str,
    body: Bytes,
) -> WebhookAttempt {
    let failed = |error: String| WebhookAttempt {
        status: None,
        error: Some(error),
    };
    let request = match http::Request::post(&webhook.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(SECRET_HEADER, &webhook.secret)
        .header(SIGNATURE_HEADER, signed)
        .body(Full::new(body))
    {
        Ok(request) => request,
        Err(error) => return failed(format!("invalid webhook request: {error}")),
    };
    let exchange = async {
        let response = client.send(request).await?;
        let status = response.status();
        // Read the answer whole so that the attempt ends when the receiver is done.
        let _ = response.into_body().collect().await;
        Ok::<_, crate::Error>(status)
    };
    match tokio::time::timeout(webhook.timeout, exchange).await {
        Ok(Ok(status)) => WebhookAttempt {
            status: Some(status),
            error: None,
        },
        Ok(Err(error)) => failed(chain(&error)),
        Err(_) => failed(format!("no answer within {:?}", webhook.timeout)),
    }
}

/// An error and its causes on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let mut webhook = Webhook::new("http://127.0.0.1:1/", "s");
        webhook.initial_backoff = Duration::from_millis(100);
        webhook.max_backoff = Duration::from_millis(350);
        let waits: Vec<_> = (1..=4).map(|n| webhook.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        assert_eq!(webhook.backoff(200), Duration::from_millis(350));
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let webhook = Webhook::new("http://127.0.0.1:1/", "hunter2");
        assert!(!format!("{webhook:?}").contains("hunter2"));
    }

    #[test]
    fn signatures_follow_rfc_4231() {
        // Test case 1: a 20-byte key of 0x0b.
        assert_eq!(
            signature(&[0x0b; 20], b"Hi There"),
            "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }
}
