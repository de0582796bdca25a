//! Tells ENS at once when one of its devices is blocked or allowed again, so it stops or resumes
//! its subscriptions without waiting for its next request to fail or succeed.
//!
//! Each [`Transition`] becomes one `POST` to the configured callback URL with the JSON body
//! `{"device_id": …, "user": …, "state": "blocked"|"allowed", "reason": …}`, retried with backoff
//! when ENS is down or answers an error. Deliveries go one at a time, in the order of the
//! transitions, so ENS never sees an unblock overtake the block before it. Each transition is
//! counted in the state's [metrics](crate::metrics) as delivered or failed (retries exhausted,
//! or missed because the notifier fell behind).

use crate::state::{Compliance, Transition};
use bytes::Bytes;
use ews_proxy_core::upstream::UpstreamClient;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use std::future::Future;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// The body ENS receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallbackBody<'a> {
    /// The EAS device id.
    pub device_id: &'a str,
    /// The device's user, when known.
    pub user: Option<&'a str>,
    /// `blocked` or `allowed`.
    pub state: &'static str,
    /// The reason code of the new decision.
    pub reason: &'static str,
}

impl<'a> From<&'a Transition> for CallbackBody<'a> {
    fn from(transition: &'a Transition) -> Self {
        CallbackBody {
            device_id: transition.device_id.as_str(),
            user: transition.user.as_deref(),
            state: transition.after.state(),
            reason: transition.after.reason(),
        }
    }
}

/// Delivers transitions to ENS; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct EnsNotifier {
    client: UpstreamClient,
    url: Uri,
    attempts: u32,
    first_backoff: Duration,
    timeout: Duration,
}

impl EnsNotifier {
    /// Posts to `url` through `client`, up to 6 attempts per transition.
    pub fn new(client: UpstreamClient, url: Uri) -> Self {
        EnsNotifier {
            client,
            url,
            attempts: 6,
            first_backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(10),
        }
    }

    /// Sets the attempts per transition and the first backoff (doubling after each failure).
    pub fn with_retries(mut self, attempts: u32, first_backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.first_backoff = first_backoff;
        self
    }

    /// Delivers every transition of `compliance` from now on, until `shutdown` completes.
    ///
    /// Subscribes when called, not when first polled, so no transition made between spawning
    /// the returned future and its first poll is missed.
    pub fn run(
        self,
        compliance: Compliance,
        shutdown: impl Future<Output = ()>,
    ) -> impl Future<Output = ()> {
        let mut transitions = compliance.subscribe();
        async move {
            let mut shutdown = std::pin::pin!(shutdown);
            loop {
                let transition = tokio::select! {
                    () = &mut shutdown => return,
                    received = transitions.recv() => match received {
                        Ok(transition) => transition,
                        Err(RecvError::Lagged(missed)) => {
                            tracing::error!(missed, "ens callback fell behind: some transitions were not delivered");
                            if let Some(metrics) = compliance.metrics() {
                                metrics.ens_failed(missed);
                            }
                            continue;
                        }
                        Err(RecvError::Closed) => return,
                    },
                };
                let delivered = self.deliver(&transition).await;
                if let Some(metrics) = compliance.metrics() {
                    if delivered {
                        metrics.ens_delivered();
                    } else {
                        metrics.ens_failed(1);
                    }
                }
            }
        }
    }

    /// Delivers one transition, with retries; true when ENS accepted it.
    pub async fn deliver(&self, transition: &Transition) -> bool {
        let body = match serde_json::to_vec(&CallbackBody::from(transition)) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                tracing::error!(%error, "cannot encode the ens callback");
                return false;
            }
        };
        let mut backoff = self.first_backoff;
        for attempt in 1..=self.attempts {
            match self.post(body.clone()).await {
                Ok(status) if status.is_success() => {
                    tracing::info!(device = %transition.device_id, state = transition.after.state(), "ens told");
                    return true;
                }
                Ok(status) => {
                    tracing::warn!(device = %transition.device_id, %status, attempt, "ens refused the callback")
                }
                Err(error) => {
                    tracing::warn!(device = %transition.device_id, %error, attempt, "ens callback failed")
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        tracing::error!(device = %transition.device_id, attempts = self.attempts, "gave up telling ens; it will learn at its next request");
        false
    }

    async fn post(
        &self,
        body: Bytes,
    ) -> Result<http::StatusCode, Box<dyn std::error::Error + Send + Sync>> {
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )?;
        let response =
            tokio::time::timeout(self.timeout, self.client.inner().request(request)).await??;
        Ok(response.status())
    }
}
