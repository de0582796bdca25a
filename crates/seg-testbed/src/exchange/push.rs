//! Push subscriptions: `SendNotification` posted to the callback URL with the queued events, or
//! a `StatusEvent` heartbeat after `StatusFrequency` minutes without events.
//!
//! The callback answers with `SendNotificationResult`: `SubscriptionStatus` `OK` acknowledges
//! the events, `Unsubscribe` ends the subscription. A failing callback is retried at doubling
//! intervals, starting at half a minute; once the next interval would exceed `StatusFrequency`
//! the subscription is dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use tokio::sync::Notify;

use super::responses::{self, Events};
use super::soap::MESSAGES;
use super::{Shared, xml};

/// The most events one notification carries.
const MAX_EVENTS_PER_NOTIFICATION: usize = 50;
/// The largest callback answer read.
const MAX_ANSWER: usize = 1024 * 1024;

/// The callback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `SubscriptionStatus` `OK`: keep sending.
    Ok,
    /// `SubscriptionStatus` `Unsubscribe`: end the subscription.
    Unsubscribe,
}

/// Starts the delivery task of a push subscription.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    id: String,
    url: Uri,
    status_frequency: Duration,
    notify: Arc<Notify>,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = run(&shared, &id, &url, status_frequency, &notify) => {}
            _ = shared.until_shutdown() => {}
        }
    });
}

async fn run(shared: &Shared, id: &str, url: &Uri, status_frequency: Duration, notify: &Notify) {
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(status_frequency) => {}
        }
        let mut retry_in = shared.config.minute / 2;
        loop {
            let Some((document, last_seq)) = snapshot(shared, id) else {
                return;
            };
            match send(shared, url, document).await {
                Ok(Answer::Ok) => {
                    if let Some(subscription) = shared.store().subscriptions.get_mut(id) {
                        subscription.acknowledge(last_seq);
                    }
                    break;
                }
                Ok(Answer::Unsubscribe) => {
                    tracing::debug!(subscription = id, "callback answered Unsubscribe");
                    shared.store().remove(id);
                    return;
                }
                Err(why) => {
                    tracing::debug!(subscription = id, %why, "push notification failed");
                    if retry_in > status_frequency {
                        shared.store().remove(id);
                        return;
                    }
                    tokio::time::sleep(retry_in).await;
                    retry_in *= 2;
                }
            }
        }
    }
}

/// The `SendNotification` document for the subscription's queued events (or a status event)
/// and the watermark it acknowledges; `None` once the subscription is gone.
fn snapshot(shared: &Shared, id: &str) -> Option<(String, u64)> {
    let store = shared.store();
    let subscription = store.subscriptions.get(id)?;
    let events: Vec<_> = subscription
        .queue
        .iter()
        .take(MAX_EVENTS_PER_NOTIFICATION)
        .cloned()
        .collect();
    let more = subscription.queue.len() > events.len();
    let last = events.last().map_or(subscription.acked, |e| e.seq);
    let content = if events.is_empty() {
        Events::Status(subscription.acked)
    } else {
        Events::Some(&events)
    };
    let notification = responses::notification(id, Some(subscription.acked), Some(more), content);
    Some((responses::send_notification(&notification), last))
}

async fn send(shared: &Shared, url: &Uri, document: String) -> Result<Answer, String> {
    let request = Request::post(url.clone())
        .header(header::CONTENT_TYPE, "text/xml; charset=utf-8")
        .header(header::USER_AGENT, "ExchangeServicesClient/15.01.2507.006")
        .body(Full::new(Bytes::from(document)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = shared
            .push_client
            .send(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("the callback answered {status}"));
        }
        parse_answer(&body)
    };
    tokio::time::timeout(shared.config.push_timeout, exchange)
        .await
        .map_err(|_| "the callback did not answer in time".to_string())?
}

/// Reads `SendNotificationResult/SubscriptionStatus` from the callback's answer.
fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    let root = xml::parse(body)?;
    let status = root
        .descendant(MESSAGES, "SendNotificationResult")
        .and_then(|r| r.child(MESSAGES, "SubscriptionStatus"))
        .ok_or("the answer has no SendNotificationResult/SubscriptionStatus")?;
    match status.text() {
        "OK" => Ok(Answer::Ok),
        "Unsubscribe" => Ok(Answer::Unsubscribe),
        other => Err(format!("unknown SubscriptionStatus {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str) -> String {
        format!(
            r#"<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><SendNotificationResult xmlns="{MESSAGES}"><SubscriptionStatus>{status}</SubscriptionStatus></SendNotificationResult></soap:Body></soap:Envelope>"#
        )
    }

    #[test]
    fn the_callback_answer_is_read_by_namespace() {
        assert_eq!(parse_answer(answer("OK").as_bytes()), Ok(Answer::Ok));
        assert_eq!(
            parse_answer(answer("Unsubscribe").as_bytes()),
            Ok(Answer::Unsubscribe)
        );
    }

    #[test]
    fn unreadable_answers_are_failures() {
        assert!(parse_answer(answer("Maybe").as_bytes()).is_err());
        assert!(parse_answer(b"<html>oops</html>").is_err());
        assert!(parse_answer(b"").is_err());
    }
}
