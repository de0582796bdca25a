//! One device's watch: its subscription lifecycle (from `ens-subscription`) plus what ENS does
//! with what it hears: each new mail's subject fetched with `GetItem` through the gateway and
//! recorded as the notification ENS would have sent, and each change of state written to the
//! store.

use crate::auth::DeviceAuth;
use crate::config::Config;
use crate::store::{DeviceState, Mode, Notification, Store, StoredDevice};
use crate::tls;
use axum::response::{IntoResponse, Response};
use ens_subscription::EwsError;
use ens_subscription::client::EwsClient;
use ens_subscription::lifecycle::{
    self, DeviceEvent, DeviceState as LifecycleState, LifecycleConfig, Mode as LifecycleMode,
    SubscriptionHandle,
};
use ens_subscription::push::{PushAnswer, PushReceiver};
use ens_subscription::soap::{GetItem, ItemId};
use http::Uri;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tower::ServiceExt as _;
use tower::timeout::Timeout;

/// The HTTP service of a device's EWS client: a pooled client (plain HTTP or TLS, as
/// `gateway_url` says), with a deadline on each response's headers (never on a streaming body).
type GatewayService = Timeout<Client<HttpsConnector<HttpConnector>, Full<bytes::Bytes>>>;

/// What every watch shares: the configuration, the store and the gateway client.
#[derive(Debug)]
pub struct WatchContext {
    config: Config,
    store: Store,
    /// The client of every device without a client certificate.
    gateway: EwsClient<GatewayService>,
    /// The roots trusting an `https://` gateway; `None` for `http://`.
    roots: Option<Arc<RootCertStore>>,
}

impl WatchContext {
    /// The shared context; errs when the gateway URL or its trust store cannot be used.
    pub fn new(config: Config, store: Store) -> Result<Self, String> {
        let url: Uri = config
            .gateway_url
            .parse()
            .map_err(|e| format!("gateway_url: {e}"))?;
        let roots = match url.scheme_str() {
            Some("http") => None,
            Some("https") => Some(Arc::new(
                tls::roots(config.gateway_trust_store.as_deref())
                    .map_err(|e| format!("gateway_trust_store: {e}"))?,
            )),
            _ => return Err("gateway_url: must be http:// or https://".into()),
        };
        let context = WatchContext {
            gateway: EwsClient::new(gateway_service(&config, roots.clone(), None)?, url),
            roots,
            config,
            store,
        };
        Ok(context)
    }

    /// The device's EWS client: its id header and credentials on every request. A certificate
    /// device gets a client of its own, whose TLS connections present its certificate.
    fn client_for(
        &self,
        device: &StoredDevice,
        auth: &DeviceAuth,
    ) -> Result<EwsClient<GatewayService>, String> {
        let base = match auth.certificate() {
            Some((cert_pem, key_pem)) => {
                let Some(roots) = &self.roots else {
                    return Err("a certificate device needs an https:// gateway_url".into());
                };
                let identity = tls::identity(cert_pem, key_pem).map_err(|e| e.to_string())?;
                let service = gateway_service(&self.config, Some(roots.clone()), Some(identity))?;
                EwsClient::new(service, self.gateway.config().url.clone())
            }
            None => self.gateway.with_headers(http::HeaderMap::new()),
        };
        let mut client = base
            .header(&self.config.device_id_header, &device.device_id)
            .map_err(|e| e.to_string())?;
        if let Some(authorization) = auth.authorization() {
            client
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization);
        }
        Ok(client)
    }

    fn lifecycle_config(&self, device: &StoredDevice) -> LifecycleConfig {
        let timing = &self.config.subscriptions;
        let mode = match device.mode {
            Mode::Streaming => LifecycleMode::Streaming {
                connection_timeout_minutes: timing.streaming_connection_minutes,
            },
            Mode::Pull => LifecycleMode::Pull {
                timeout_minutes: timing.status_frequency_minutes.max(1) * 2,
                poll_interval: timing.pull_interval,
            },
            Mode::Push => LifecycleMode::Push {
                url: format!("{}/push/{}", self.config.public_base(), device.push_token),
                status_frequency_minutes: timing.status_frequency_minutes,
            },
        };
        let mut config = LifecycleConfig::new(mode);
        config.minute = timing.minute;
        config.min_backoff = timing.first_backoff;
        config.max_backoff = timing.max_backoff;
        config.probe_min = timing.first_backoff;
        config.probe_max = timing.max_backoff;
        config.anchor_mailbox = Some(device.mailbox.clone());
        config
    }
}

/// A running watch; cheap to clone.
#[derive(Clone, Debug)]
pub struct Watch {
    handle: Arc<Mutex<Option<SubscriptionHandle>>>,
    /// The task writing the lifecycle's reports to the store: it holds the store until the
    /// lifecycle ends, so stopping waits for it (a restart must find the store closed).
    recorder: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Watch {
    /// Starts watching `device` with `auth`. A device stored as blocked starts blocked and
    /// probes, so a restart never reopens a gate the gateway closed.
    pub fn spawn(context: Arc<WatchContext>, device: StoredDevice, auth: DeviceAuth) -> Watch {
        let device_id: Arc<str> = Arc::from(device.device_id.as_str());
        let handle = Arc::new(Mutex::new(None));
        let watch = Watch {
            handle: handle.clone(),
            recorder: Arc::new(Mutex::new(None)),
        };
        let client = match context.client_for(&device, &auth) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(device.id = %device_id, %error, "device's credentials cannot be sent");
                let store = context.store.clone();
                let message = error;
                tokio::spawn(async move {
                    let _ = store
                        .update(&device_id, move |d| {
                            d.state = DeviceState::Error;
                            d.reason = Some(message);
                            d.state_since = Some(crate::clock::now_rfc3339());
                        })
                        .await;
                });
                return watch;
            }
        };
        let (events, received) = mpsc::unbounded_channel();
        let mut config = context.lifecycle_config(&device);
        if device.state == DeviceState::Blocked {
            config.initially_blocked =
                Some(device.reason.clone().unwrap_or_else(|| "blocked".into()));
        }
        let subscription = lifecycle::spawn(client.clone(), config, events);
        *lock(&handle) = Some(subscription);
        let recorder = tokio::spawn(record(context, client, device_id, received, watch.clone()));
        *lock(&watch.recorder) = Some(recorder);
        watch
    }

    /// The gateway blocked the device.
    pub fn blocked(&self, reason: &str) {
        if let Some(handle) = lock(&self.handle).as_ref() {
            handle.block(reason);
        }
    }

    /// The gateway allows the device again.
    pub fn allowed(&self) {
        if let Some(handle) = lock(&self.handle).as_ref() {
            handle.unblock();
        }
    }

    /// Stops the watch; with `unsubscribe`, ends the subscription at Exchange too (where the
    /// gateway lets the request through).
    pub async fn stop(self, unsubscribe: bool) {
        let handle = lock(&self.handle).take();
        if let Some(handle) = handle {
            if unsubscribe {
                handle.stop().await;
            } else {
                drop(handle);
            }
        }
        // The lifecycle has ended (stopped or aborted), so its reports' channel closes and the
        // recorder finishes what it was writing, then lets go of the store.
        let recorder = lock(&self.recorder).take();
        if let Some(recorder) = recorder {
            let _ = recorder.await;
        }
    }

    /// The current subscription's id, once subscribed (in memory only: after a restart the
    /// device subscribes anew).
    pub fn subscription_id(&self) -> Option<String> {
        lock(&self.handle).as_ref()?.subscription_id()
    }

    fn answer(&self, notification: ens_subscription::soap::Notification) -> PushAnswer {
        match lock(&self.handle).as_ref() {
            Some(handle) => handle.on_push(notification),
            None => PushAnswer::Unsubscribe,
        }
    }
}

/// A pooled HTTP/1.1 client for the gateway: plain HTTP without `roots`; with them, TLS
/// trusting them and presenting `identity` when given.
fn gateway_service(
    config: &Config,
    roots: Option<Arc<RootCertStore>>,
    identity: Option<tls::Identity>,
) -> Result<GatewayService, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let tls_config = match roots {
        Some(roots) => tls::client_config(roots, identity).map_err(|e| e.to_string())?,
        // Roots are needed only for https://, and this client connects to http:// only.
        None => {
            tls::client_config(Arc::new(RootCertStore::empty()), None).map_err(|e| e.to_string())?
        }
    };
    let builder = HttpsConnectorBuilder::new().with_tls_config(tls_config);
    let connector = if config.gateway_url.starts_with("https://") {
        builder.https_only()
    } else {
        builder.https_or_http()
    }
    .enable_http1()
    .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    Ok(Timeout::new(client, config.subscriptions.request_timeout))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turns the lifecycle's reports into store writes: states, and a notification per new mail
/// whose subject `GetItem` fetched through the gateway.
async fn record(
    context: Arc<WatchContext>,
    client: EwsClient<GatewayService>,
    device_id: Arc<str>,
    mut received: mpsc::UnboundedReceiver<DeviceEvent>,
    watch: Watch,
) {
    while let Some(event) = received.recv().await {
        match event {
            DeviceEvent::State(state) => {
                let (state, reason) = match state {
                    LifecycleState::Active => (DeviceState::Active, None),
                    LifecycleState::Blocked { reason } => (DeviceState::Blocked, Some(reason)),
                    LifecycleState::Error { message } => (DeviceState::Error, Some(message)),
                    LifecycleState::Starting | LifecycleState::Stopped => continue,
                };
                tracing::info!(device.id = %device_id, ?state, ?reason, "device state");
                if let Err(error) = context
                    .store
                    .update(&device_id, move |d| {
                        if d.state != state {
                            d.state_since = Some(crate::clock::now_rfc3339());
                        }
                        d.state = state;
                        d.reason = reason;
                    })
                    .await
                {
                    tracing::error!(device.id = %device_id, %error, "cannot record the device's state");
                }
            }
            DeviceEvent::Notification(notification) => {
                let items: Vec<ItemId> = notification.new_mail().cloned().collect();
                for item_id in items {
                    preview(&context, &client, &device_id, item_id, &watch).await;
                }
            }
        }
    }
}

/// Fetches a new message's subject and sender through the gateway and records it. A block
/// here (the gateway refusing the `GetItem`) blocks the device like any other refused request.
async fn preview(
    context: &WatchContext,
    client: &EwsClient<GatewayService>,
    device_id: &str,
    item_id: ItemId,
    watch: &Watch,
) {
    let id = item_id.id.clone();
    let result = client.clone().oneshot(GetItem::new(item_id)).await;
    match result {
        Ok(items) => {
            let Some(item) = items.into_iter().next() else {
                tracing::warn!(device.id = %device_id, "GetItem returned no item");
                return;
            };
            let notification = Notification {
                subject: item.subject.unwrap_or_default(),
                from: item.from.and_then(|from| from.address.or(from.name)),
                at: crate::clock::now_rfc3339(),
                item_id: id,
            };
            if let Err(error) = context.store.record(device_id, notification).await {
                tracing::error!(device.id = %device_id, %error, "cannot record a notification");
            }
        }
        Err(error) if error.is_blocked() => {
            let reason = match &error {
                EwsError::Blocked { reason } => reason.clone(),
                _ => "blocked".into(),
            };
            tracing::info!(device.id = %device_id, %reason, "GetItem refused: device blocked");
            watch.blocked(&reason);
        }
        Err(error) => {
            tracing::warn!(device.id = %device_id, %error, "GetItem for a new mail failed");
        }
    }
}

/// Answers Exchange's `SendNotification` for the device behind a push token: the lifecycle
/// decides `OK` or `Unsubscribe` (a blocked, stopped or unknown device is unsubscribed).
pub async fn answer_push(watch: Option<Watch>, request: axum::extract::Request) -> Response {
    if watch.is_none() {
        tracing::info!("push for an unknown or stopped device: answering Unsubscribe");
    }
    let receiver = PushReceiver::new(move |_uri: &Uri, notification| match &watch {
        Some(watch) => watch.answer(notification),
        None => PushAnswer::Unsubscribe,
    });
    match receiver.oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(error) => {
            tracing::warn!(%error, "push callback failed");
            http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
