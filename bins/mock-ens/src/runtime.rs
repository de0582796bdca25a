//! The devices at run time: one watch task per registered device, started on registration and
//! at start-up, stopped on unregistration, on a block from the gateway and at shutdown.
//!
//! The store is the truth for registrations and states; this module keeps only what cannot be
//! stored (the running tasks, the push-token index, the credentials opened for the tasks).

use crate::api::Registration;
use crate::auth::DeviceAuth;
use crate::config::Config;
use crate::seal::Sealer;
use crate::store::{DeviceState, Store, StoreError, StoredDevice};
use crate::watcher::{self, Watch, WatchContext};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The devices at run time; cheap to clone.
#[derive(Clone, Debug)]
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    sealer: Sealer,
    context: Arc<WatchContext>,
    /// Running watch tasks by device id.
    watches: Mutex<HashMap<String, Watch>>,
    /// Push callback token → device id.
    tokens: Mutex<HashMap<String, String>>,
}

impl Runtime {
    /// A runtime over `store`, opening credentials with `sealer`.
    pub fn new(config: Config, store: Store, sealer: Sealer) -> Result<Runtime, String> {
        let context = WatchContext::new(config, store.clone())?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                store,
                sealer,
                context: Arc::new(context),
                watches: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Registers (or re-registers, replacing credentials and mode) a device and starts watching
    /// its mailbox; whether it was new. A re-registered device keeps its state: a blocked
    /// device stays blocked until the gateway allows it.
    pub async fn register(
        &self,
        registration: Registration,
    ) -> Result<(StoredDevice, bool), StoreError> {
        let device_id = registration.device_id.to_ascii_uppercase();
        let existing = self.inner.store.get(&device_id).await?;
        let created = existing.is_none();
        let auth_json = serde_json::to_vec(&registration.auth).unwrap_or_default();
        let device = StoredDevice {
            sealed_auth: self.inner.sealer.seal(&device_id, &auth_json),
            mailbox: registration
                .mailbox
                .unwrap_or_else(|| registration.user.clone()),
            user: registration.user,
            mode: registration.mode,
            push_token: existing
                .as_ref()
                .map(|d| d.push_token.clone())
                .unwrap_or_else(new_token),
            state: existing
                .as_ref()
                .map(|d| d.state)
                .unwrap_or(DeviceState::Active),
            reason: existing.as_ref().and_then(|d| d.reason.clone()),
            state_since: existing
                .as_ref()
                .and_then(|d| d.state_since.clone())
                .or_else(|| Some(crate::clock::now_rfc3339())),
            watermark: None,
            next_sequence: existing.as_ref().map(|d| d.next_sequence).unwrap_or(0),
            device_id,
        };
        self.inner.store.put(device.clone()).await?;
        tracing::info!(device.id = %device.device_id, user = %device.user, mode = ?device.mode, created, "device registered");
        self.start(&device, registration.auth);
        Ok((device, created))
    }

    /// Stops watching the device and forgets it; whether it was registered.
    pub async fn unregister(&self, device_id: &str) -> Result<bool, StoreError> {
        self.stop(device_id, true).await;
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, id| id != device_id);
        let existed = self.inner.store.remove(device_id).await?;
        if existed {
            tracing::info!(device.id = %device_id, "device unregistered");
        }
        Ok(existed)
    }

    /// The gateway blocked the device: record it, stop its subscription (unsubscribing where
    /// the gateway still lets it) and keep probing; whether the device is registered.
    pub async fn block(&self, device_id: &str, reason: &str) -> Result<bool, StoreError> {
        let stored_reason = reason.to_owned();
        let Some(device) = self
            .inner
            .store
            .update(device_id, move |d| {
                if d.state != DeviceState::Blocked {
                    d.state_since = Some(crate::clock::now_rfc3339());
                }
                d.state = DeviceState::Blocked;
                d.reason = Some(stored_reason);
            })
            .await?
        else {
            return Ok(false);
        };
        tracing::info!(device.id = %device_id, reason = ?device.reason, "device blocked by the gateway");
        // The watch task sees the blocked state and winds itself down into probing.
        if let Some(watch) = self.watch(device_id) {
            watch.blocked(reason);
        }
        Ok(true)
    }

    /// The gateway allows the device again: resubscribe at once; whether it is registered.
    pub async fn allow(&self, device_id: &str) -> Result<bool, StoreError> {
        let Some(device) = self.inner.store.get(device_id).await? else {
            return Ok(false);
        };
        if device.state == DeviceState::Blocked {
            tracing::info!(device.id = %device_id, "device allowed again by the gateway");
        }
        match self.watch(device_id) {
            Some(watch) => watch.allowed(),
            None => self.restart_from_store(&device),
        }
        Ok(true)
    }

    /// The device's current subscription id, while its watch holds one.
    pub fn subscription_id(&self, device_id: &str) -> Option<String> {
        self.watch(device_id)?.subscription_id()
    }

    /// Answers a push callback from Exchange.
    pub async fn push(&self, token: &str, request: axum::extract::Request) -> Response {
        watcher::answer_push(self.watch_for(token), request).await
    }

    /// Starts the watch of every registered device (at start-up).
    pub async fn resume_all(&self) -> Result<(), StoreError> {
        for device in self.inner.store.all().await? {
            self.restart_from_store(&device);
        }
        Ok(())
    }

    /// Stops every watch task (at shutdown); the store keeps the states.
    pub async fn stop_all(&self) {
        let watches: Vec<Watch> = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, watch)| watch)
            .collect();
        for watch in watches {
            watch.stop(false).await;
        }
    }

    fn restart_from_store(&self, device: &StoredDevice) {
        let opened = self
            .inner
            .sealer
            .open(&device.device_id, &device.sealed_auth)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<DeviceAuth>(&bytes).ok());
        match opened {
            Some(auth) => self.start(device, auth),
            None => tracing::error!(
                device.id = %device.device_id,
                "stored credentials do not open with this key; re-register the device"
            ),
        }
    }

    fn start(&self, device: &StoredDevice, auth: DeviceAuth) {
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device.push_token.clone(), device.device_id.clone());
        let watch = Watch::spawn(self.inner.context.clone(), device.clone(), auth);
        let previous = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device.device_id.clone(), watch);
        if let Some(previous) = previous {
            tokio::spawn(previous.stop(false));
        }
    }

    async fn stop(&self, device_id: &str, unsubscribe: bool) {
        let watch = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device_id);
        if let Some(watch) = watch {
            watch.stop(unsubscribe).await;
        }
    }

    fn watch(&self, device_id: &str) -> Option<Watch> {
        self.inner
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
            .cloned()
    }

    fn watch_for(&self, token: &str) -> Option<Watch> {
        let device_id = self
            .inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()?;
        self.watch(&device_id)
    }
}

/// An opaque, unguessable push token (128 random bits).
fn new_token() -> String {
    let mut bytes = [0; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
