//! The subscription lifecycle of one device: subscribe, keep alive, resubscribe with backoff,
//! and the reaction to the gateway.
//!
//! [`spawn`] starts a task that holds one subscription (streaming, pull or push) for a device
//! and reports what happens to a [`DeviceObserver`]: each notification with events (not
//! heartbeats) and each change of [`DeviceState`].
//!
//! - Streaming: the stream is reopened whenever it ends (`Closed`, cut, ended); a subscription
//!   the server lost is recreated. Streaming subscriptions have no watermark in the EWS schema,
//!   so events between the loss and the new subscription are not replayed.
//! - Pull: `GetEvents` every `poll_interval` (at once while `MoreEvents`), from the last
//!   watermark; a lost subscription is recreated from that watermark.
//! - Push: Exchange posts to the callback, which the caller serves with a
//!   [`PushReceiver`](crate::push::PushReceiver) whose handler calls
//!   [`SubscriptionHandle::on_push`]. A subscription silent for twice its `StatusFrequency` is
//!   recreated from the last watermark (the old one is answered `Unsubscribe` if it ever posts
//!   again).
//!
//! Errors are retried with exponential backoff from `min_backoff` to `max_backoff`
//! (`ErrorServerBusy`'s `BackOffMilliseconds` honoured), and reported as
//! [`DeviceState::Error`]. [`EwsError::Blocked`] is not an error: the device becomes
//! [`DeviceState::Blocked`], its subscription is ended (unsubscribed where the gateway lets the
//! request through; a push subscription by answering its next post `Unsubscribe`), and the task
//! then probes with a `Subscribe` at doubling intervals from `probe_min` to `probe_max`, or at
//! once on [`SubscriptionHandle::unblock`] (the gateway's callback). Only a successful
//! subscription makes the device active again.
//!
//! ```no_run
//! use ens_subscription::client::EwsClient;
//! use ens_subscription::lifecycle::{self, DeviceEvent, LifecycleConfig, Mode};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ens_subscription::EwsError> {
//! let client = EwsClient::http("http://gateway:8080/EWS/Exchange.asmx".parse().unwrap())
//!     .header("x-device-id", "EASDEV1")?
//!     .header("authorization", "Basic YWxpY2U6c2VjcmV0")?;
//! let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
//! let handle = lifecycle::spawn(client, LifecycleConfig::new(Mode::streaming()), events);
//! while let Some(event) = received.recv().await {
//!     match event {
//!         DeviceEvent::Notification(n) => println!("new mail: {:?}", n.new_mail().collect::<Vec<_>>()),
//!         DeviceEvent::State(state) => println!("device is now {state:?}"),
//!     }
//! }
//! handle.stop().await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::Service;

use crate::client::{AFFINITY_COOKIE, EwsClient};
use crate::error::{BoxError, EwsError};
use crate::push::PushAnswer;
use crate::soap::{
    EventType, FolderId, GetEvents, GetStreamingEvents, Notification, Subscribe, SubscriptionKind,
    Unsubscribe,
};

/// How the device's subscription is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// A streaming subscription read with `GetStreamingEvents`.
    Streaming {
        /// `ConnectionTimeout` of each stream, in minutes (1 to 30).
        connection_timeout_minutes: u32,
    },
    /// A pull subscription polled with `GetEvents`.
    Pull {
        /// The subscription's `Timeout`, in minutes.
        timeout_minutes: u32,
        /// The pause between two polls.
        poll_interval: Duration,
    },
    /// A push subscription posting to `url`.
    Push {
        /// The callback URL (carrying an opaque per-device token, never credentials).
        url: String,
        /// `StatusFrequency`, in minutes; ENS2 uses 15.
        status_frequency_minutes: u32,
    },
}

impl Mode {
    /// Streaming with 30-minute connections, as ENS does.
    pub fn streaming() -> Self {
        Mode::Streaming {
            connection_timeout_minutes: 30,
        }
    }
}

/// The settings of one device's lifecycle; plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleConfig {
    /// Streaming, pull or push.
    pub mode: Mode,
    /// The folders watched (the Inbox by default).
    pub folders: Vec<FolderId>,
    /// The event types watched (`NewMailEvent` by default).
    pub event_types: Vec<EventType>,
    /// The length of one EWS minute, for the push silence limit (2 × `StatusFrequency`
    /// minutes); 60 s except in tests.
    pub minute: Duration,
    /// The first pause after an error.
    pub min_backoff: Duration,
    /// The longest pause after errors.
    pub max_backoff: Duration,
    /// The first pause before probing a blocked device.
    pub probe_min: Duration,
    /// The longest pause between probes of a blocked device.
    pub probe_max: Duration,
    /// The mailbox for `X-AnchorMailbox` with `X-PreferServerAffinity`, so that Exchange
    /// keeps the subscription on one back-end server; the affinity cookie it returns is then
    /// sent with every later request of the subscription.
    pub anchor_mailbox: Option<String>,
    /// Starts blocked with this reason (a device persisted as blocked): no `Subscribe` until
    /// the first probe or [`SubscriptionHandle::unblock`], so a restart never resubscribes a
    /// blocked device ahead of the gateway's answer.
    pub initially_blocked: Option<String>,
}

impl LifecycleConfig {
    /// The defaults for this mode: the Inbox, `NewMailEvent`, 60-second minutes, backoff from
    /// 1 s to 5 min, probes from 5 s to 15 min, no affinity.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            folders: vec![FolderId::inbox()],
            event_types: vec![EventType::NewMail],
            minute: Duration::from_secs(60),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            probe_min: Duration::from_secs(5),
            probe_max: Duration::from_secs(900),
            anchor_mailbox: None,
            initially_blocked: None,
        }
    }
}

/// Where a device stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum DeviceState {
    /// Not subscribed yet (just started).
    Starting,
    /// Subscribed; notifications flow.
    Active,
    /// The gateway blocked the device; nothing is watched until it unblocks.
    Blocked {
        /// The gateway's reason.
        reason: String,
    },
    /// The last attempt failed with an error other than a block; retrying with backoff.
    Error {
        /// What failed.
        message: String,
    },
    /// Stopped by [`SubscriptionHandle::stop`].
    Stopped,
}

/// What the lifecycle reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A notification with events (heartbeats are not reported).
    Notification(Notification),
    /// The device's state changed.
    State(DeviceState),
}

/// Receives what happens to one device. Called from the lifecycle task (and, for push, from
/// [`SubscriptionHandle::on_push`]): it should only record or forward.
pub trait DeviceObserver: Send + Sync + 'static {
    /// A notification with events arrived.
    fn notification(&self, notification: Notification);
    /// The device's state changed.
    fn state_changed(&self, state: &DeviceState);
}

impl DeviceObserver for mpsc::UnboundedSender<DeviceEvent> {
    fn notification(&self, notification: Notification) {
        let _ = self.send(DeviceEvent::Notification(notification));
    }
    fn state_changed(&self, state: &DeviceState) {
        let _ = self.send(DeviceEvent::State(state.clone()));
    }
}

/// A request to the task.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Block(String),
    Unblock,
    Stop,
}

struct Inner {
    state: DeviceState,
    subscription_id: Option<String>,
    watermark: Option<String>,
    last_push: Instant,
    command: Option<Command>,
}

struct Shared {
    inner: Mutex<Inner>,
    wake: Notify,
    observer: Box<dyn DeviceObserver>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, state: DeviceState) {
        let changed = {
            let mut inner = self.lock();
            let changed = inner.state != state;
            inner.state = state.clone();
            changed
        };
        if changed {
            self.observer.state_changed(&state);
        }
    }

    fn command(&self, command: Command) {
        let mut inner = self.lock();
        // A stop is final; otherwise the latest request wins.
        if inner.command != Some(Command::Stop) {
            inner.command = Some(command);
        }
        drop(inner);
        self.wake.notify_one();
    }

    fn take_command(&self) -> Option<Command> {
        self.lock().command.take()
    }
}

/// Controls one device's lifecycle task. Dropping it stops the task without unsubscribing.
pub struct SubscriptionHandle {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionHandle")
            .field("state", &self.state())
            .field("subscription_id", &self.subscription_id())
            .finish()
    }
}

impl SubscriptionHandle {
    /// The device's current state.
    pub fn state(&self) -> DeviceState {
        self.shared.lock().state.clone()
    }

    /// The current subscription's id, if subscribed.
    pub fn subscription_id(&self) -> Option<String> {
        self.shared.lock().subscription_id.clone()
    }

    /// The last watermark received (pull and push).
    pub fn watermark(&self) -> Option<String> {
        self.shared.lock().watermark.clone()
    }

    /// The gateway says the device is blocked (its callback): stop at once, as if a request had
    /// been refused.
    pub fn block(&self, reason: &str) {
        self.shared.command(Command::Block(reason.to_string()));
    }

    /// The gateway says the device is compliant again (its callback): subscribe at once
    /// instead of waiting for the next probe. Ignored unless blocked.
    pub fn unblock(&self) {
        self.shared.command(Command::Unblock);
    }

    /// Handles a push notification for this device (call it from the
    /// [`PushHandler`](crate::push::PushHandler) of the callback): records the heartbeat,
    /// reports the events, and answers `Unsubscribe` for a subscription that is not the
    /// current one or a device that is blocked or stopped.
    pub fn on_push(&self, notification: Notification) -> PushAnswer {
        let wanted = {
            let mut inner = self.shared.lock();
            let current = inner.subscription_id.as_deref() == Some(&notification.subscription_id);
            let wanted = current && matches!(inner.state, DeviceState::Active);
            if wanted {
                inner.last_push = Instant::now();
                if let Some(watermark) = notification.last_watermark() {
                    inner.watermark = Some(watermark.to_string());
                }
            }
            wanted
        };
        if !wanted {
            return PushAnswer::Unsubscribe;
        }
        if !notification.is_heartbeat() {
            self.shared.observer.notification(notification);
        }
        PushAnswer::Ok
    }

    /// Stops the task, unsubscribing (pull, streaming) where the gateway lets it; waits for
    /// the task to end.
    pub async fn stop(mut self) {
        self.shared.command(Command::Stop);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts the lifecycle of one device using `client` (which carries the device's headers).
/// Must be called within a Tokio runtime.
pub fn spawn<S, B, O>(
    client: EwsClient<S>,
    config: LifecycleConfig,
    observer: O,
) -> SubscriptionHandle
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    O: DeviceObserver,
{
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            state: DeviceState::Starting,
            subscription_id: None,
            watermark: None,
            last_push: Instant::now(),
            command: config.initially_blocked.clone().map(Command::Block),
        }),
        wake: Notify::new(),
        observer: Box::new(observer),
    });
    let task = tokio::spawn(
        Lifecycle {
            client,
            config,
            shared: shared.clone(),
        }
        .run(),
    );
    SubscriptionHandle {
        shared,
        task: Some(task),
    }
}

/// Why an active subscription ended.
enum Ended {
    /// Subscribe again (the subscription is lost or dead).
    Resubscribe,
    /// The gateway blocked the device.
    Blocked(String),
    /// Stop for good.
    Stop,
}

struct Lifecycle<S> {
    client: EwsClient<S>,
    config: LifecycleConfig,
    shared: Arc<Shared>,
}

/// Doubles a pause up to a cap.
fn grow(pause: Duration, cap: Duration) -> Duration {
    pause.saturating_mul(2).min(cap)
}

impl<S, B> Lifecycle<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async fn run(mut self) {
        let mut backoff = self.config.min_backoff;
        let mut blocked: Option<(String, Duration)> = None;
        loop {
            if let Some((reason, probe_in)) = blocked.take() {
                self.end_subscription().await;
                self.shared.set_state(DeviceState::Blocked {
                    reason: reason.clone(),
                });
                match self.pause(probe_in).await {
                    Some(Command::Stop) => break,
                    // An unblock or the probe timer: try to subscribe (a block on the way in
                    // keeps us blocked with a longer pause).
                    Some(Command::Unblock) | None => {}
                    Some(Command::Block(reason)) => {
                        blocked = Some((reason, probe_in));
                        continue;
                    }
                }
                match self.subscribe().await {
                    Ok(()) => {}
                    Err(EwsError::Blocked { reason }) => {
                        blocked = Some((reason, grow(probe_in, self.config.probe_max)));
                        continue;
                    }
                    Err(error) => {
                        // Not blocked any more, but failing: the error path retries.
                        self.shared.set_state(DeviceState::Error {
                            message: error.to_string(),
                        });
                        if let Some(command) = self
                            .pause(error.back_off().unwrap_or(backoff).max(backoff))
                            .await
                        {
                            match command {
                                Command::Stop => break,
                                Command::Block(reason) => {
                                    blocked = Some((reason, self.config.probe_min))
                                }
                                Command::Unblock => {}
                            }
                        }
                        backoff = grow(backoff, self.config.max_backoff);
                        continue;
                    }
                }
            } else if self.shared.lock().subscription_id.is_none() {
                if let Some(command) = self.shared.take_command() {
                    match command {
                        Command::Stop => break,
                        Command::Block(reason) => {
                            blocked = Some((reason, self.config.probe_min));
                            continue;
                        }
                        Command::Unblock => {}
                    }
                }
                match self.subscribe().await {
                    Ok(()) => {}
                    Err(EwsError::Blocked { reason }) => {
                        blocked = Some((reason, self.config.probe_min));
                        continue;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "subscribe failed");
                        // A watermark the server no longer knows cannot be resumed from.
                        if error.code() == Some("ErrorInvalidWatermark") {
                            self.shared.lock().watermark = None;
                        }
                        self.shared.set_state(DeviceState::Error {
                            message: error.to_string(),
                        });
                        let pause = error.back_off().unwrap_or(backoff).max(backoff);
                        backoff = grow(backoff, self.config.max_backoff);
                        match self.pause(pause).await {
                            Some(Command::Stop) => break,
                            Some(Command::Block(reason)) => {
                                blocked = Some((reason, self.config.probe_min));
                            }
                            _ => {}
                        }
                        continue;
                    }
                }
            }
            backoff = self.config.min_backoff;
            self.shared.set_state(DeviceState::Active);
            let ended = match self.config.mode.clone() {
                Mode::Streaming {
                    connection_timeout_minutes,
                } => self.stream(connection_timeout_minutes).await,
                Mode::Pull { poll_interval, .. } => self.poll(poll_interval).await,
                Mode::Push {
                    status_frequency_minutes,
                    ..
                } => self.watch_push(status_frequency_minutes).await,
            };
            match ended {
                Ended::Resubscribe => {
                    // The old subscription is gone or dead: forget it (push posts for it are
                    // answered Unsubscribe by on_push).
                    self.forget_subscription();
                }
                Ended::Blocked(reason) => blocked = Some((reason, self.config.probe_min)),
                Ended::Stop => break,
            }
        }
        self.end_subscription().await;
        self.shared.set_state(DeviceState::Stopped);
    }

    /// Waits `pause` or until a command arrives; returns the command.
    async fn pause(&self, pause: Duration) -> Option<Command> {
        let deadline = Instant::now() + pause;
        loop {
            if let Some(command) = self.shared.take_command() {
                return Some(command);
            }
            // A wake-up may be a stale permit of a command already taken: keep waiting.
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return self.shared.take_command(),
                _ = self.shared.wake.notified() => {}
            }
        }
    }

    /// Subscribes and records the subscription.
    async fn subscribe(&mut self) -> Result<(), EwsError> {
        let kind = match &self.config.mode {
            Mode::Streaming { .. } => SubscriptionKind::Streaming,
            Mode::Pull {
                timeout_minutes, ..
            } => SubscriptionKind::Pull {
                timeout_minutes: *timeout_minutes,
            },
            Mode::Push {
                url,
                status_frequency_minutes,
            } => SubscriptionKind::Push {
                url: url.clone(),
                status_frequency_minutes: *status_frequency_minutes,
            },
        };
        let request = Subscribe {
            kind,
            folders: self.config.folders.clone(),
            event_types: self.config.event_types.clone(),
            watermark: self.shared.lock().watermark.clone(),
        };
        let mut client = self.client.clone();
        if let Some(anchor) = &self.config.anchor_mailbox {
            client = client
                .header("x-anchormailbox", anchor)?
                .header("x-preferserveraffinity", "true")?;
        }
        let response = client.subscribe(request).await?;
        if let Some(cookie) = &response.affinity_cookie {
            self.client = self
                .client
                .clone()
                .header("cookie", &format!("{AFFINITY_COOKIE}={cookie}"))?;
        }
        let mut inner = self.shared.lock();
        inner.subscription_id = Some(response.subscription_id);
        if response.watermark.is_some() {
            inner.watermark = response.watermark;
        }
        inner.last_push = Instant::now();
        Ok(())
    }

    fn forget_subscription(&self) {
        self.shared.lock().subscription_id = None;
    }

    /// Ends the current subscription on the server where possible, and forgets it. Push
    /// subscriptions are ended by answering their next post `Unsubscribe`.
    async fn end_subscription(&self) {
        let Some(id) = self.shared.lock().subscription_id.take() else {
            return;
        };
        if matches!(self.config.mode, Mode::Push { .. }) {
            return;
        }
        // Best effort: when the gateway blocks the device this is refused too, and the server
        // drops the subscription on its own (pull timeout, no stream).
        if let Err(error) = self.client.unsubscribe(Unsubscribe::new(id)).await {
            tracing::debug!(%error, "unsubscribe failed");
        }
    }

    /// Reads streams of the current subscription until it is lost, blocked or stopped.
    async fn stream(&self, connection_timeout_minutes: u32) -> Ended {
        let mut backoff = self.config.min_backoff;
        loop {
            let Some(id) = self.shared.lock().subscription_id.clone() else {
                return Ended::Resubscribe;
            };
            if let Some(ended) = self.command_ends() {
                return ended;
            }
            let request = GetStreamingEvents::new(id, connection_timeout_minutes);
            let opened = tokio::select! {
                opened = self.client.get_streaming_events(request) => opened,
                _ = self.shared.wake.notified() => {
                    if let Some(ended) = self.command_ends() {
                        return ended;
                    }
                    continue;
                }
            };
            let stream = match opened {
                Ok(stream) => stream,
                Err(error) => match self.after_error(error, &mut backoff).await {
                    Some(ended) => return ended,
                    None => continue,
                },
            };
            self.shared.set_state(DeviceState::Active);
            let mut stream = std::pin::pin!(stream);
            let mut delivered = false;
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = self.shared.wake.notified() => {
                        match self.command_ends() {
                            Some(ended) => return ended,
                            None => continue,
                        }
                    }
                };
                match next {
                    Some(Ok(notification)) => {
                        delivered = true;
                        backoff = self.config.min_backoff;
                        if !notification.is_heartbeat() {
                            self.shared.observer.notification(notification);
                        }
                    }
                    // Closed in good order: open the next stream at once.
                    None => break,
                    Some(Err(error)) if error.is_subscription_lost() => return Ended::Resubscribe,
                    // Cut or ended: reopen at once, since a block shows on the reopening
                    // request; but a stream that fails before carrying anything is an error
                    // to back off from, or a broken peer would be hammered.
                    Some(Err(error)) => {
                        tracing::debug!(%error, "notification stream ended");
                        if !delivered
                            && stream.keepalives() == 0
                            && let Some(ended) = self.after_error(error, &mut backoff).await
                        {
                            return ended;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Polls the current pull subscription until it is lost, blocked or stopped.
    async fn poll(&self, poll_interval: Duration) -> Ended {
        let mut backoff = self.config.min_backoff;
        let mut pause = Duration::ZERO;
        loop {
            if let Some(ended) = self.pause(pause).await.and_then(|c| self.ended_by(c)) {
                return ended;
            }
            let (id, watermark) = {
                let inner = self.shared.lock();
                match (&inner.subscription_id, &inner.watermark) {
                    (Some(id), Some(watermark)) => (id.clone(), watermark.clone()),
                    _ => return Ended::Resubscribe,
                }
            };
            match self.client.get_events(GetEvents::new(id, watermark)).await {
                Ok(notification) => {
                    backoff = self.config.min_backoff;
                    self.shared.set_state(DeviceState::Active);
                    if let Some(watermark) = notification.last_watermark() {
                        self.shared.lock().watermark = Some(watermark.to_string());
                    }
                    pause = if notification.more_events {
                        Duration::ZERO
                    } else {
                        poll_interval
                    };
                    if !notification.is_heartbeat() {
                        self.shared.observer.notification(notification);
                    }
                }
                Err(error) => {
                    if let Some(ended) = self.after_error(error, &mut backoff).await {
                        return ended;
                    }
                    pause = Duration::ZERO;
                }
            }
        }
    }

    /// Watches a push subscription's heartbeats until it falls silent, or the device is
    /// blocked or stopped.
    async fn watch_push(&self, status_frequency_minutes: u32) -> Ended {
        let limit = self
            .config
            .minute
            .saturating_mul(status_frequency_minutes.saturating_mul(2));
        loop {
            let last = self.shared.lock().last_push;
            let silent_until = last + limit;
            if Instant::now() >= silent_until {
                tracing::debug!("push subscription silent for twice its status frequency");
                return Ended::Resubscribe;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(silent_until) => {}
                _ = self.shared.wake.notified() => {
                    if let Some(ended) = self.command_ends() {
                        return ended;
                    }
                }
            }
        }
    }

    /// The end a pending command imposes, if any (an unblock while active means nothing).
    fn command_ends(&self) -> Option<Ended> {
        self.shared.take_command().and_then(|c| self.ended_by(c))
    }

    fn ended_by(&self, command: Command) -> Option<Ended> {
        match command {
            Command::Stop => Some(Ended::Stop),
            Command::Block(reason) => Some(Ended::Blocked(reason)),
            Command::Unblock => None,
        }
    }

    /// Handles an error of an active subscription: a block or lost subscription ends it;
    /// anything else is reported and waited out with backoff.
    async fn after_error(&self, error: EwsError, backoff: &mut Duration) -> Option<Ended> {
        match error {
            EwsError::Blocked { reason } => return Some(Ended::Blocked(reason)),
            error if error.is_subscription_lost() => return Some(Ended::Resubscribe),
            error => {
                tracing::debug!(%error, "EWS call failed");
                let pause = error.back_off().unwrap_or(*backoff).max(*backoff);
                self.shared.set_state(DeviceState::Error {
                    message: error.to_string(),
                });
                *backoff = grow(*backoff, self.config.max_backoff);
                if let Some(command) = self.pause(pause).await {
                    return self.ended_by(command);
                }
            }
        }
        None
    }
}
