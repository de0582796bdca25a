//! The embedded store: registrations, their states and the notifications recorded, in one redb
//! file that survives a restart.
//!
//! Two tables: `devices` (device id → JSON [`StoredDevice`]) and `notifications` ((device id,
//! sequence) → JSON [`Notification`]). Credentials inside a `StoredDevice` are already sealed
//! (see [`crate::seal`]); nothing in the file is a secret in the clear. Every method commits
//! before it returns, and runs on tokio's blocking pool, since a commit waits for the disk.

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

const DEVICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("devices");
const NOTIFICATIONS: TableDefinition<'_, (&str, u64), &[u8]> =
    TableDefinition::new("notifications");

/// The most notifications kept per device; older ones are dropped first.
pub const NOTIFICATIONS_KEPT: u64 = 1000;

/// How a device's mailbox is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A streaming subscription held open through the gateway.
    Streaming,
    /// A push subscription: Exchange calls this process's callback directly.
    Push,
    /// A pull subscription polled with `GetEvents`.
    Pull,
}

/// Where a device stands, as the registration API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Subscribed; notifications flow.
    Active,
    /// The gateway blocked it; its subscription is stopped until it is allowed again.
    Blocked,
    /// Subscribing fails for another reason; retried with backoff.
    Error,
}

/// A registration as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDevice {
    /// The EAS device id (upper case).
    pub device_id: String,
    /// The device's user.
    pub user: String,
    /// The mailbox watched.
    pub mailbox: String,
    /// How it is watched.
    pub mode: Mode,
    /// The credentials, sealed for this device.
    pub sealed_auth: String,
    /// The opaque token in this device's push callback URL.
    pub push_token: String,
    /// Where it stands.
    pub state: DeviceState,
    /// Why, when blocked or in error.
    #[serde(default)]
    pub reason: Option<String>,
    /// Since when it is in this state (RFC 3339, UTC, milliseconds).
    #[serde(default)]
    pub state_since: Option<String>,
    /// The last watermark seen, to resume from.
    #[serde(default)]
    pub watermark: Option<String>,
    /// The next notification's sequence number.
    #[serde(default)]
    pub next_sequence: u64,
}

/// A notification ENS would have sent to the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The new message's subject, fetched with `GetItem` through the gateway.
    pub subject: String,
    /// The sender, when Exchange gave one.
    #[serde(default)]
    pub from: Option<String>,
    /// When it was recorded (RFC 3339, UTC, milliseconds).
    pub at: String,
    /// The EWS item id.
    pub item_id: String,
}

/// The store failed; the request that needed it fails with it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb refused (I/O, corruption, a second process holding the file…).
    #[error("store: {0}")]
    Database(String),
    /// A stored record does not decode.
    #[error("store record for {key} is damaged: {source}")]
    Damaged {
        /// The record's key.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// The blocking task running the store operation died.
    #[error("store task failed: {0}")]
    Task(String),
}

fn storage(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(error.to_string())
}

/// The store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens the store at `path`, creating it when missing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(DEVICES).map_err(storage)?;
        txn.open_table(NOTIFICATIONS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Store { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Inserts or replaces a device.
    pub async fn put(&self, device: StoredDevice) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let json = serde_json::to_vec(&device).map_err(db_json)?;
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(DEVICES)
                .map_err(storage)?
                .insert(device.device_id.as_str(), json.as_slice())
                .map_err(storage)?;
            txn.commit().map_err(storage)
        })
        .await
    }

    /// Changes a device in place with `change`, atomically; `None` when it is not registered.
    pub async fn update(
        &self,
        device_id: &str,
        change: impl FnOnce(&mut StoredDevice) + Send + 'static,
    ) -> Result<Option<StoredDevice>, StoreError> {
        let device_id = device_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            let updated = {
                let mut table = txn.open_table(DEVICES).map_err(storage)?;
                let current = match table.get(device_id.as_str()).map_err(storage)? {
                    Some(value) => Some(decode(&device_id, value.value())?),
                    None => None,
                };
                match current {
                    Some(mut device) => {
                        change(&mut device);
                        let json = serde_json::to_vec(&device).map_err(db_json)?;
                        table
                            .insert(device_id.as_str(), json.as_slice())
                            .map_err(storage)?;
                        Some(device)
                    }
                    None => None,
                }
            };
            txn.commit().map_err(storage)?;
            Ok(updated)
        })
        .await
    }

    /// The device, when registered.
    pub async fn get(&self, device_id: &str) -> Result<Option<StoredDevice>, StoreError> {
        let device_id = device_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(DEVICES).map_err(storage)?;
            match table.get(device_id.as_str()).map_err(storage)? {
                Some(value) => Ok(Some(decode(&device_id, value.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// Every registered device, in device id order.
    pub async fn all(&self) -> Result<Vec<StoredDevice>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(DEVICES).map_err(storage)?;
            let mut devices = Vec::new();
            for entry in table.iter().map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                devices.push(decode(key.value(), value.value())?);
            }
            Ok(devices)
        })
        .await
    }

    /// Removes a device and its notifications; whether it was registered.
    pub async fn remove(&self, device_id: &str) -> Result<bool, StoreError> {
        let device_id = device_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            let existed = txn
                .open_table(DEVICES)
                .map_err(storage)?
                .remove(device_id.as_str())
                .map_err(storage)?
                .is_some();
            txn.open_table(NOTIFICATIONS)
                .map_err(storage)?
                .retain_in(
                    (device_id.as_str(), 0)..=(device_id.as_str(), u64::MAX),
                    |_, _| false,
                )
                .map_err(storage)?;
            txn.commit().map_err(storage)?;
            Ok(existed)
        })
        .await
    }

    /// Records a notification for the device (dropping the oldest beyond
    /// [`NOTIFICATIONS_KEPT`]); `false` when the device is not registered.
    pub async fn record(
        &self,
        device_id: &str,
        notification: Notification,
    ) -> Result<bool, StoreError> {
        let device_id = device_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            {
                let mut devices = txn.open_table(DEVICES).map_err(storage)?;
                let Some(value) = devices.get(device_id.as_str()).map_err(storage)? else {
                    return Ok(false);
                };
                let mut device = decode(&device_id, value.value())?;
                drop(value);
                let sequence = device.next_sequence;
                device.next_sequence += 1;
                let json = serde_json::to_vec(&device).map_err(db_json)?;
                devices
                    .insert(device_id.as_str(), json.as_slice())
                    .map_err(storage)?;
                let mut notifications = txn.open_table(NOTIFICATIONS).map_err(storage)?;
                let json = serde_json::to_vec(&notification).map_err(db_json)?;
                notifications
                    .insert((device_id.as_str(), sequence), json.as_slice())
                    .map_err(storage)?;
                if sequence >= NOTIFICATIONS_KEPT {
                    notifications
                        .remove((device_id.as_str(), sequence - NOTIFICATIONS_KEPT))
                        .map_err(storage)?;
                }
            }
            txn.commit().map_err(storage)?;
            Ok(true)
        })
        .await
    }

    /// The device's notifications, oldest first.
    pub async fn notifications(&self, device_id: &str) -> Result<Vec<Notification>, StoreError> {
        let device_id = device_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(NOTIFICATIONS).map_err(storage)?;
            let mut out = Vec::new();
            for entry in table
                .range((device_id.as_str(), 0)..=(device_id.as_str(), u64::MAX))
                .map_err(storage)?
            {
                let (_, value) = entry.map_err(storage)?;
                out.push(serde_json::from_slice(value.value()).map_err(|source| {
                    StoreError::Damaged {
                        key: device_id.clone(),
                        source,
                    }
                })?);
            }
            Ok(out)
        })
        .await
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<StoredDevice, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Damaged {
        key: key.to_owned(),
        source,
    })
}

fn db_json(error: serde_json::Error) -> StoreError {
    StoreError::Database(format!("encoding a record: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> StoredDevice {
        StoredDevice {
            device_id: id.into(),
            user: "alice@test.local".into(),
            mailbox: "alice@test.local".into(),
            mode: Mode::Streaming,
            sealed_auth: "sealed".into(),
            push_token: "token".into(),
            state: DeviceState::Active,
            reason: None,
            state_since: None,
            watermark: None,
            next_sequence: 0,
        }
    }

    fn note(subject: &str) -> Notification {
        Notification {
            subject: subject.into(),
            from: None,
            at: "2026-11-25T00:00:00Z".into(),
            item_id: "AAA=".into(),
        }
    }

    #[tokio::test]
    async fn devices_and_notifications_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ens.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put(device("EASDEV1")).await.unwrap();
            store.put(device("EASDEV2")).await.unwrap();
            assert!(store.record("EASDEV1", note("one")).await.unwrap());
            assert!(store.record("EASDEV1", note("two")).await.unwrap());
            assert!(!store.record("NOPE", note("x")).await.unwrap());
            let blocked = store
                .update("EASDEV2", |d| d.state = DeviceState::Blocked)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(blocked.state, DeviceState::Blocked);
        }
        let store = Store::open(&path).unwrap();
        let all = store.all().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].state, DeviceState::Blocked);
        let subjects: Vec<_> = store
            .notifications("EASDEV1")
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.subject)
            .collect();
        assert_eq!(subjects, ["one", "two"]);
        assert!(store.notifications("EASDEV2").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn removing_a_device_removes_its_notifications_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ens.redb")).unwrap();
        store.put(device("A")).await.unwrap();
        store.put(device("AB")).await.unwrap();
        store.record("A", note("a")).await.unwrap();
        store.record("AB", note("ab")).await.unwrap();
        assert!(store.remove("A").await.unwrap());
        assert!(!store.remove("A").await.unwrap());
        assert!(store.get("A").await.unwrap().is_none());
        assert!(store.notifications("A").await.unwrap().is_empty());
        assert_eq!(store.notifications("AB").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn old_notifications_are_dropped_beyond_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ens.redb")).unwrap();
        store.put(device("A")).await.unwrap();
        for i in 0..NOTIFICATIONS_KEPT + 3 {
            store.record("A", note(&i.to_string())).await.unwrap();
        }
        let kept = store.notifications("A").await.unwrap();
        assert_eq!(kept.len() as u64, NOTIFICATIONS_KEPT);
        assert_eq!(kept[0].subject, "3");
    }
}
