//! `GetStreamingEvents`: a long-lived chunked response, one `<Envelope>` document per chunk.
//!
//! The connection takes ownership of its subscriptions (a later stream on the same
//! subscription takes it over). Queued events are written at once as `Notifications`; when idle
//! a `ConnectionStatus` `OK` keep-alive is written every keep-alive interval; after
//! `ConnectionTimeout` minutes, or when every subscription has ended or moved to another
//! stream, a final `ConnectionStatus` `Closed` ends the response.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt as _;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::responses::{self, Events};
use super::subscriptions::Waker;
use super::{Body, Shared};

/// Starts streaming the given (already checked) subscriptions for `timeout`; returns the body.
pub(crate) fn start(shared: Arc<Shared>, ids: Vec<String>, timeout: Duration) -> Body {
    let (tx, rx) = mpsc::channel(16);
    let notify = Arc::new(Notify::new());
    let token = shared.next_token();
    {
        let mut store = shared.store();
        for id in &ids {
            if let Some(subscription) = store.subscriptions.get_mut(id) {
                let previous = subscription.waker.replace(Waker {
                    token,
                    notify: notify.clone(),
                });
                if let Some(previous) = previous {
                    previous.notify.notify_one();
                }
            }
        }
    }
    // Write what queued up while no stream was open.
    notify.notify_one();
    tokio::spawn(run(shared, ids, token, notify, tx, timeout));
    ChannelBody { rx }.boxed_unsync()
}

async fn run(
    shared: Arc<Shared>,
    ids: Vec<String>,
    token: u64,
    notify: Arc<Notify>,
    tx: mpsc::Sender<Bytes>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let every = shared
        .config
        .keepalive_interval
        .max(Duration::from_millis(1));
    let mut keepalive = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        let (chunk, last) = tokio::select! {
            _ = notify.notified() => {
                let (notifications, alive) = drain(&shared, &ids, token);
                if !notifications.is_empty() {
                    let chunk = message(&shared, &format!("<m:Notifications>{notifications}</m:Notifications>"));
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                if alive {
                    continue;
                }
                (status(&shared, "Closed"), true)
            }
            _ = keepalive.tick() => (status(&shared, "OK"), false),
            _ = tokio::time::sleep_until(deadline) => (status(&shared, "Closed"), true),
            _ = shared.until_shutdown() => break,
            _ = tx.closed() => break,
        };
        if tx.send(chunk).await.is_err() || last {
            break;
        }
    }
    release(&shared, &ids, token);
}

/// Takes the queued events of the subscriptions this stream still owns; returns the
/// `Notification` elements and whether it still owns any subscription.
fn drain(shared: &Shared, ids: &[String], token: u64) -> (String, bool) {
    let mut store = shared.store();
    let mut notifications = String::new();
    let mut alive = false;
    for id in ids {
        let Some(subscription) = store.subscriptions.get_mut(id) else {
            continue;
        };
        if subscription.waker.as_ref().map(|w| w.token) != Some(token) {
            continue;
        }
        alive = true;
        let events: Vec<_> = subscription.queue.drain(..).collect();
        if let Some(last) = events.last() {
            subscription.acked = last.seq;
            notifications.push_str(&responses::notification(
                id,
                None,
                None,
                Events::Some(&events),
            ));
        }
    }
    (notifications, alive)
}

/// Gives up ownership of the subscriptions this stream still owns.
fn release(shared: &Shared, ids: &[String], token: u64) {
    let mut store = shared.store();
    for id in ids {
        if let Some(subscription) = store.subscriptions.get_mut(id)
            && subscription.waker.as_ref().map(|w| w.token) == Some(token)
        {
            subscription.waker = None;
        }
    }
}

fn status(shared: &Shared, status: &str) -> Bytes {
    message(
        shared,
        &format!("<m:ConnectionStatus>{status}</m:ConnectionStatus>"),
    )
}

fn message(shared: &Shared, inner: &str) -> Bytes {
    let body = responses::response(
        "GetStreamingEvents",
        &[responses::success("GetStreamingEvents", inner)],
    );
    Bytes::from(responses::stream_envelope(
        &shared.config.server_version,
        &body,
    ))
}

/// A response body fed chunk by chunk from a channel; each chunk is one frame, flushed as it
/// comes.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}
