//! A stand-in for the Workspace ONE UEM (AirWatch) REST API's MEM device search, holding devices
//! whose compliance a test changes at will, and pushing each change to a webhook.
//!
//! # The API
//!
//! `GET /API/mem/memdevices/search` (path in any case, as IIS matches it) with the headers
//! `aw-tenant-code: <tenant code>`, `Authorization: Basic <user:password>` and
//! `Accept: application/json` (or `application/json;version=1`, or none). The query:
//!
//! | parameter | meaning |
//! |---|---|
//! | `organizationgroupid` | the organization group; absent means the API user's own ([`UemConfig::organization_group_id`]); any other is `403` |
//! | `page` | the page, from 0 (default 0) |
//! | `pagesize` | devices per page, 1 to [`MAX_PAGE_SIZE`] (default [`DEFAULT_PAGE_SIZE`]) |
//! | `modifiedsince` | **this stand-in's extension** for delta sync: an RFC 3339 instant; only devices changed at or after it, oldest change first |
//!
//! The answer is the reference's `MEMDeviceSearchResult`:
//!
//! ```json
//! {"MEMDevices": [ … ], "Page": 0, "PageSize": 500, "Total": 1200}
//! ```
//!
//! where `Total` counts every device matching the query (all pages) and each device is a
//! MEMDevice record: the reference's fields `MEMDeviceID`, `EASDeviceID`, `EmailAddress`,
//! `FriendlyName`, `Status` (`Allowed`/`Blocked`), `Reason`, `Managed` (the strings `TRUE`/`FALSE`),
//! `EasDeviceType`, `Platform` (`null` while unmanaged), then the compliance fields the gateway's
//! policies need, named after the UEM MDM device model where it has them: `DeviceId`, `UserName`,
//! `UserPrincipalName`, `Model`, `OperatingSystem`, `EnrollmentStatus` (`Enrolled`, `Unenrolled`,
//! `EnterpriseWiped`, `DeviceWiped`), `ComplianceStatus` (`Compliant`, `NonCompliant`, `Pending`,
//! `NotAvailable`), `CompromisedStatus`, `ManagedEmailClient`, `IsEncrypted`,
//! `ActiveSyncProfileInstalled`, `LastSeen` and `LastModified` (RFC 3339, UTC). Devices come in
//! the order they were added (in the order they changed for `modifiedsince`).
//!
//! A missing or wrong `aw-tenant-code` or Basic credential is `401` (with `WWW-Authenticate:
//! Basic`); a bad parameter `400`; an `Accept` without JSON `406`; errors carry the reference's
//! `{"errorCode", "message", "activityId"}` body.
//!
//! # Test controls (no authentication)
//!
//! - `POST /testbed/devices/{device_id}/wipe` (enterprise wipe), `/device-wipe`, `/unenroll`,
//!   `/enroll`, `/compliant`, `/noncompliant`, `/compromised`: change the device (see [`Change`])
//!   and answer its record.
//! - `POST /testbed/devices` with a device of the devices file format ([`Device::parse_list`]):
//!   adds it (`201`; `409` if it exists). `GET /testbed/devices[/{device_id}]` lists records,
//!   `DELETE /testbed/devices/{device_id}` removes one.
//! - `POST /testbed/mode` with `{"mode": "normal" | "down" | "garbage" | "empty_list" |
//!   "no_content" | "truncated_page"}`, `{"mode": "slow", "delay_ms": N}` or `{"mode":
//!   "down_from_page", "page": N}` sets the fault mode ([`Mode`]).
//! - `GET /testbed/requests` (the latest [`UemConfig::record_requests`] API requests) and `GET
//!   /testbed/webhook-deliveries` list what happened.
//!
//! Malformed JSON is `400` with a message; an unknown device `404`.
//!
//! # Change events
//!
//! With a [`Webhook`], every change POSTs (in order, retried with bounded backoff, each delivery
//! recorded) `{"event_id", "event_type", "occurred_at", "device_id", "device": {MEMDevice
//! record}}` with `X-Seg-Webhook-Secret: <secret>` and `X-Seg-Signature: sha256=<hex HMAC-SHA256
//! of the body>` ([`signature`]). Event types: `device.added`, `device.updated`,
//! `device.deleted`, `device.wiped`, `device.unenrolled`, `device.enrolled`,
//! `device.compliance_changed`, `device.compromised`.
//!
//! ```
//! use seg_testbed::uem::{Change, Device, Enrollment, UemConfig, UemServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> seg_testbed::Result<()> {
//! let listener = seg_testbed::harness::local_listener().await?;
//! let config = UemConfig::new(vec![Device::new("EASDEV1", 1, "alice@test.local")]);
//! let uem = UemServer::spawn(listener, None, config)?;
//! assert!(uem.search_url().ends_with("/API/mem/memdevices/search"));
//! let wiped = uem.update("EASDEV1", Change::EnterpriseWipe)?;
//! assert_eq!(wiped.enrollment, Enrollment::EnterpriseWiped);
//! assert!(wiped.modified > uem.started());
//! uem.shutdown().await;
//! # Ok(()) }
//! ```

mod device;
mod receiver;
mod time;
mod webhook;

pub use device::{Compliance, Device, Enrollment, generate};
pub use receiver::{RECEIVER_PATH, WebhookReceiver};
pub use time::Timestamp;
pub use webhook::{
    DeliveryOutcome, SECRET_HEADER, SIGNATURE_HEADER, Webhook, WebhookAttempt, WebhookDelivery,
    signature,
};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::recording::{RequestLog, header_pairs, owned_headers, path_and_query};
use crate::serve::Running;
use device::MemDevice;
use webhook::Outbox;

/// The search endpoint's path, compared case-insensitively.
pub const SEARCH_PATH: &str = "/API/mem/memdevices/search";
/// The header carrying the API key (tenant code).
pub const TENANT_CODE_HEADER: &str = "aw-tenant-code";
/// The query parameter of delta sync (this stand-in's extension): an RFC 3339 instant.
pub const MODIFIED_SINCE_PARAM: &str = "modifiedsince";
/// The page size when the query names none, as the reference documents.
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// The largest page size accepted (`400` beyond).
pub const MAX_PAGE_SIZE: u32 = 100_000;
/// The tenant code of [`UemConfig::new`].
pub const DEFAULT_TENANT_CODE: &str = "testbed-tenant-code";
/// The API user of [`UemConfig::new`].
pub const DEFAULT_API_USER: &str = "uemapi";
/// The API password of [`UemConfig::new`].
pub const DEFAULT_API_PASSWORD: &str = "P@ssw0rd!";
/// The organization group of [`UemConfig::new`].
pub const DEFAULT_ORGANIZATION_GROUP_ID: u64 = 7;

/// The Basic credentials of the API user.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the server behaves; plain data.
#[derive(Debug, Clone)]
pub struct UemConfig {
    /// The devices it starts with; their `modified` is set to the start time.
    pub devices: Vec<Device>,
    /// The API user's Basic credentials.
    pub credentials: Credentials,
    /// The `aw-tenant-code` every API request must carry.
    pub tenant_code: String,
    /// The API user's organization group, which holds every device.
    pub organization_group_id: u64,
    /// Where change events go; none are sent without it.
    pub webhook: Option<Webhook>,
    /// The largest test-control request body accepted (`413` beyond).
    pub max_body: usize,
    /// How many of the latest API requests [`UemHandle::requests`] keeps
    /// ([`DEFAULT_RECORDED_REQUESTS`](crate::DEFAULT_RECORDED_REQUESTS) by default; 0 keeps
    /// none).
    pub record_requests: usize,
}

impl UemConfig {
    /// These devices with [`DEFAULT_API_USER`] / [`DEFAULT_API_PASSWORD`],
    /// [`DEFAULT_TENANT_CODE`], [`DEFAULT_ORGANIZATION_GROUP_ID`] and no webhook.
    pub fn new(devices: Vec<Device>) -> Self {
        Self {
            devices,
            credentials: Credentials {
                user: DEFAULT_API_USER.into(),
                password: DEFAULT_API_PASSWORD.into(),
            },
            tenant_code: DEFAULT_TENANT_CODE.into(),
            organization_group_id: DEFAULT_ORGANIZATION_GROUP_ID,
            webhook: None,
            max_body: 1024 * 1024,
            record_requests: crate::DEFAULT_RECORDED_REQUESTS,
        }
    }
}

/// How the search endpoint behaves, to test a client's resilience. Test controls keep working
/// in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answers as described in the module documentation.
    #[default]
    Normal,
    /// `503 Service Unavailable` (an HTML page) to every API request, before authentication.
    Down,
    /// `200` with `Content-Type: application/json` and a body that is not JSON.
    Garbage,
    /// Waits this long before handling each API request, then answers normally.
    Slow(Duration),
    /// `200` with a well-formed, empty result: no devices, `Total` 0.
    EmptyList,
    /// `204 No Content` with no body.
    NoContent,
    /// `200` with the right `Content-Length`, but the connection is cut after half the body.
    TruncatedPage,
    /// Pages before this one answer normally; this one and later ones `503`.
    DownFromPage(u32),
}

/// A change made in the console, as [`UemHandle::update`] and the test controls apply it.
/// Each clears any `status`/`reason` override so that the MEM status follows the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Enterprise wipe: enrollment `EnterpriseWiped`, compliance `NonCompliant`
    /// (`device.wiped`; `POST …/wipe`).
    EnterpriseWipe,
    /// Device (factory) wipe: enrollment `DeviceWiped`, compliance `NonCompliant`
    /// (`device.wiped`; `POST …/device-wipe`).
    DeviceWipe,
    /// Unenrolled: enrollment `Unenrolled`, compliance `NotAvailable` (`device.unenrolled`;
    /// `POST …/unenroll`).
    Unenroll,
    /// (Re-)enrolled: enrollment `Enrolled`, compliance `Pending`, seen now
    /// (`device.enrolled`; `POST …/enroll`).
    Enroll,
    /// Back in good standing: enrolled, `Compliant`, not compromised, seen now
    /// (`device.compliance_changed`; `POST …/compliant`).
    Compliant,
    /// `NonCompliant` (`device.compliance_changed`; `POST …/noncompliant`).
    Noncompliant,
    /// Compromised and therefore `NonCompliant` (`device.compromised`; `POST …/compromised`).
    Compromised,
}

impl Change {
    /// The change a test-control action names (`wipe`, `device-wipe`, `unenroll`, `enroll`,
    /// `compliant`, `noncompliant`, `compromised`).
    pub fn from_action(action: &str) -> Option<Self> {
        Some(match action {
            "wipe" => Self::EnterpriseWipe,
            "device-wipe" => Self::DeviceWipe,
            "unenroll" => Self::Unenroll,
            "enroll" => Self::Enroll,
            "compliant" => Self::Compliant,
            "noncompliant" => Self::Noncompliant,
            "compromised" => Self::Compromised,
            _ => return None,
        })
    }

    /// The `event_type` of the change event.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::EnterpriseWipe | Self::DeviceWipe => "device.wiped",
            Self::Unenroll => "device.unenrolled",
            Self::Enroll => "device.enrolled",
            Self::Compliant | Self::Noncompliant => "device.compliance_changed",
            Self::Compromised => "device.compromised",
        }
    }

    fn apply(self, device: &mut Device) {
        device.status = None;
        device.reason = None;
        match self {
            Self::EnterpriseWipe => {
                device.enrollment = Enrollment::EnterpriseWiped;
                device.compliance = Compliance::Noncompliant;
            }
            Self::DeviceWipe => {
                device.enrollment = Enrollment::DeviceWiped;
                device.compliance = Compliance::Noncompliant;
            }
            Self::Unenroll => {
                device.enrollment = Enrollment::Unenrolled;
                device.compliance = Compliance::NotAvailable;
            }
            Self::Enroll => {
                device.enrollment = Enrollment::Enrolled;
                device.compliance = Compliance::Pending;
                device.last_seen = Timestamp::now();
            }
            Self::Compliant => {
                device.enrollment = Enrollment::Enrolled;
                device.compliance = Compliance::Compliant;
                device.compromised = false;
                device.last_seen = Timestamp::now();
            }
            Self::Noncompliant => device.compliance = Compliance::Noncompliant,
            Self::Compromised => {
                device.compromised = true;
                device.compliance = Compliance::Noncompliant;
            }
        }
    }
}

/// An API request that reached the server (test controls under `/testbed/` excepted).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub uri: String,
    /// All headers, as received.
    pub headers: HeaderMap,
}

/// Starts UEM stand-ins.
#[derive(Debug)]
pub struct UemServer;

impl UemServer {
    /// Serves the API on `listener` (TLS when `tls` is given) until the handle is shut down or
    /// dropped. Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the listener's address cannot be read, [`Error::InvalidDevice`] if
    /// two devices share a device id.
    pub fn spawn(
        listener: TcpListener,
        tls: Option<Arc<ServerConfig>>,
        config: UemConfig,
    ) -> Result<UemHandle> {
        let addr = listener.local_addr().map_err(|source| Error::Connect {
            addr: "the listener".into(),
            source,
        })?;
        let UemConfig {
            devices,
            credentials,
            tenant_code,
            organization_group_id,
            webhook,
            max_body,
            record_requests,
        } = config;
        let store = Store::new(devices, Timestamp::now())?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let outbox = webhook.map(|webhook| Outbox::start(webhook, shutdown_rx.clone()));
        let shared = Arc::new(Shared {
            settings: Settings {
                credentials,
                tenant_code,
                organization_group_id,
                max_body,
            },
            store: Mutex::new(store),
            requests: RequestLog::new(record_requests),
            mode: Mutex::new(Mode::Normal),
            outbox,
            shutdown: shutdown_rx,
        });
        let handler_state = shared.clone();
        let running = Running::spawn(listener, addr, tls, shutdown_tx, move |request| {
            handle(handler_state.clone(), request)
        });
        Ok(UemHandle { running, shared })
    }
}

/// A running UEM stand-in. Dropping it stops the server.
#[derive(Debug)]
pub struct UemHandle {
    running: Running,
    shared: Arc<Shared>,
}

impl UemHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// The scheme, host and port, e.g. `https://127.0.0.1:8444`.
    pub fn base_url(&self) -> String {
        self.running.base_url()
    }

    /// The search endpoint's URL, without a query.
    pub fn search_url(&self) -> String {
        format!("{}{SEARCH_PATH}", self.base_url())
    }

    /// The `aw-tenant-code` the server expects.
    pub fn tenant_code(&self) -> &str {
        &self.shared.settings.tenant_code
    }

    /// The `Authorization` value of the API user's Basic credentials.
    pub fn authorization(&self) -> String {
        let credentials = &self.shared.settings.credentials;
        crate::harness::basic_auth(&credentials.user, &credentials.password)
    }

    /// The API user's organization group.
    pub fn organization_group_id(&self) -> u64 {
        self.shared.settings.organization_group_id
    }

    /// When the server started: the `modified` of every device it started with.
    pub fn started(&self) -> Timestamp {
        self.shared.store().started
    }

    /// Every device, in the order served.
    pub fn devices(&self) -> Vec<Device> {
        self.shared.store().devices.clone()
    }

    /// The device with this EAS device id.
    pub fn device(&self, device_id: &str) -> Option<Device> {
        self.shared.store().get(device_id).cloned()
    }

    /// Adds `device`, or replaces the device with its id, stamping it as changed; sends
    /// `device.added` or `device.updated`. Returns the device as stored.
    pub fn set_device(&self, device: Device) -> Device {
        self.shared.set_device(device).0
    }

    /// Applies a console change to a device, stamping it as changed, and sends its event.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownDevice`] if the server holds no such device.
    pub fn update(&self, device_id: &str, change: Change) -> Result<Device> {
        self.shared
            .change(device_id, change.event_type(), |device| {
                change.apply(device)
            })
    }

    /// Edits a device freely (its `device_id` excepted), stamping it as changed; sends
    /// `device.updated`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownDevice`] if the server holds no such device.
    pub fn edit(&self, device_id: &str, edit: impl FnOnce(&mut Device)) -> Result<Device> {
        self.shared.change(device_id, "device.updated", edit)
    }

    /// Removes a device; sends `device.deleted`. A delta sync cannot see a removal: only a full
    /// sync or the event tells.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownDevice`] if the server holds no such device.
    pub fn remove_device(&self, device_id: &str) -> Result<Device> {
        self.shared.remove(device_id)
    }

    /// The fault mode in force.
    pub fn mode(&self) -> Mode {
        *lock(&self.shared.mode)
    }

    /// Sets the fault mode; it applies to requests that arrive from now on.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    /// The API requests received so far, oldest first: the latest
    /// [`UemConfig::record_requests`] of them.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.to_vec()
    }

    /// Forgets the API requests received so far.
    pub fn clear_requests(&self) {
        self.shared.requests.clear();
    }

    /// How many API requests arrived since the start, kept by [`requests`](Self::requests) or
    /// not.
    pub fn requests_received(&self) -> u64 {
        self.shared.requests.received()
    }

    /// Every change event and what became of it, oldest first (empty without a webhook).
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        match &self.shared.outbox {
            Some(outbox) => lock(&outbox.deliveries).clone(),
            None => Vec::new(),
        }
    }

    /// Stops accepting, closes every connection and stops event deliveries; returns once the
    /// accept loop has ended.
    pub async fn shutdown(self) {
        self.running.stop().await;
    }
}

#[derive(Debug)]
struct Settings {
    credentials: Credentials,
    tenant_code: String,
    organization_group_id: u64,
    max_body: usize,
}

/// State shared by connections and the handle.
#[derive(Debug)]
struct Shared {
    settings: Settings,
    store: Mutex<Store>,
    requests: RequestLog<RecordedRequest>,
    mode: Mutex<Mode>,
    outbox: Option<Outbox>,
    shutdown: watch::Receiver<bool>,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    async fn until_shutdown(&self) {
        let mut shutdown = self.shutdown.clone();
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    }

    /// Stamps and stores a device; sends `device.added` or `device.updated`. Returns it and
    /// whether it replaced one.
    fn set_device(&self, device: Device) -> (Device, bool) {
        let mut store = self.store();
        let stamp = store.stamp();
        let (index, replaced) = store.insert(device);
        store.touch(index, stamp);
        let device = store.devices[index].clone();
        let event_type = if replaced {
            "device.updated"
        } else {
            "device.added"
        };
        self.emit(event_type, &device, stamp);
        (device, replaced)
    }

    /// Adds a device that must be new.
    fn add(&self, device: Device) -> Result<Device> {
        let mut store = self.store();
        if store.get(&device.device_id).is_some() {
            return Err(Error::InvalidDevice(format!(
                "device {} already exists",
                device.device_id
            )));
        }
        let stamp = store.stamp();
        let (index, _) = store.insert(device);
        store.touch(index, stamp);
        let device = store.devices[index].clone();
        self.emit("device.added", &device, stamp);
        Ok(device)
    }

    fn change(
        &self,
        device_id: &str,
        event_type: &str,
        edit: impl FnOnce(&mut Device),
    ) -> Result<Device> {
        let mut store = self.store();
        let index = store.index_of(device_id)?;
        let stamp = store.stamp();
        let device = &mut store.devices[index];
        edit(device);
        device.device_id = device_id.to_string();
        store.touch(index, stamp);
        let device = store.devices[index].clone();
        // Sent under the lock so that events leave in the order the changes were made.
        self.emit(event_type, &device, stamp);
        Ok(device)
    }

    fn remove(&self, device_id: &str) -> Result<Device> {
        let mut store = self.store();
        let stamp = store.stamp();
        let device = store.remove(device_id)?;
        self.emit("device.deleted", &device, stamp);
        Ok(device)
    }

    fn emit(&self, event_type: &str, device: &Device, occurred_at: Timestamp) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        #[derive(Serialize)]
        struct Event<'a> {
            event_id: &'a str,
            event_type: &'a str,
            occurred_at: String,
            device_id: &'a str,
            device: MemDevice<'a>,
        }
        let event_id = uuid::Uuid::new_v4().to_string();
        let event = Event {
            event_id: &event_id,
            event_type,
            occurred_at: occurred_at.to_string(),
            device_id: &device.device_id,
            device: device.record(),
        };
        match serde_json::to_vec(&event) {
            Ok(body) => outbox.send(event_id, event_type, &device.device_id, body.into()),
            Err(error) => tracing::error!(%error, "could not serialise a change event"),
        }
    }
}

/// The devices, in the order served, with their change stamps.
#[derive(Debug)]
struct Store {
    devices: Vec<Device>,
    index: HashMap<String, usize>,
    /// Devices changed since the start, by their (unique) change stamp.
    changed: BTreeMap<Timestamp, usize>,
    started: Timestamp,
    last_stamp: Timestamp,
}

impl Store {
    fn new(mut devices: Vec<Device>, started: Timestamp) -> Result<Self> {
        let mut index = HashMap::with_capacity(devices.len());
        for (i, device) in devices.iter_mut().enumerate() {
            device.modified = started;
            if index.insert(device.device_id.clone(), i).is_some() {
                return Err(Error::InvalidDevice(format!(
                    "device {} is listed twice",
                    device.device_id
                )));
            }
        }
        Ok(Self {
            devices,
            index,
            changed: BTreeMap::new(),
            started,
            last_stamp: started,
        })
    }

    /// A fresh stamp: now, or just after the last one if the clock has not moved past it.
    fn stamp(&mut self) -> Timestamp {
        let stamp = Timestamp::now().max(self.last_stamp.plus_micros(1));
        self.last_stamp = stamp;
        stamp
    }

    fn get(&self, device_id: &str) -> Option<&Device> {
        self.index.get(device_id).map(|&i| &self.devices[i])
    }

    fn index_of(&self, device_id: &str) -> Result<usize> {
        self.index
            .get(device_id)
            .copied()
            .ok_or_else(|| Error::UnknownDevice(device_id.to_string()))
    }

    /// Stores a device in place of the one with its id, or at the end.
    fn insert(&mut self, device: Device) -> (usize, bool) {
        match self.index.get(&device.device_id) {
            Some(&i) => {
                // Keep the old stamp so that `touch` can unlink it.
                let modified = self.devices[i].modified;
                self.devices[i] = Device { modified, ..device };
                (i, true)
            }
            None => {
                let i = self.devices.len();
                self.index.insert(device.device_id.clone(), i);
                self.devices.push(Device {
                    modified: self.started,
                    ..device
                });
                (i, false)
            }
        }
    }

    fn touch(&mut self, index: usize, stamp: Timestamp) {
        let previous = self.devices[index].modified;
        if previous > self.started {
            self.changed.remove(&previous);
        }
        self.devices[index].modified = stamp;
        self.changed.insert(stamp, index);
    }

    fn remove(&mut self, device_id: &str) -> Result<Device> {
        let index = self.index_of(device_id)?;
        let device = self.devices.remove(index);
        self.index = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.device_id.clone(), i))
            .collect();
        self.changed = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.modified > self.started)
            .map(|(i, d)| (d.modified, i))
            .collect();
        Ok(device)
    }

    /// One page of the devices changed at or after `since` (all without it), and how many match.
    fn search(&self, since: Option<Timestamp>, page: u32, size: u32) -> (Vec<&Device>, usize) {
        let skip = (page as usize).saturating_mul(size as usize);
        let size = size as usize;
        match since {
            Some(since) if since > self.started => {
                let matching = self.changed.range(since..);
                let total = matching.clone().count();
                let page = matching
                    .skip(skip)
                    .take(size)
                    .map(|(_, &i)| &self.devices[i])
                    .collect();
                (page, total)
            }
            _ => {
                let total = self.devices.len();
                let start = skip.min(total);
                let end = start.saturating_add(size).min(total);
                (self.devices[start..end].iter().collect(), total)
            }
        }
    }
}

/// The response body type: whole documents, or a document cut short.
type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

const JSON: &str = "application/json; charset=utf-8";

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, JSON, body),
        Err(error) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("could not serialise the answer: {error}"),
        ),
    }
}

/// An error in the reference's `BaseExceptionModel` shape.
fn api_error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({
            "errorCode": status.as_u16(),
            "message": message,
            "activityId": uuid::Uuid::new_v4().to_string(),
        }),
    )
}

/// A test-control error: `{"error": message}`.
fn control_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    if parts.uri.path().starts_with("/testbed/") {
        let body = match Limited::new(body, shared.settings.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return control_error(StatusCode::PAYLOAD_TOO_LARGE, "request too large");
            }
            Err(_) => return control_error(StatusCode::BAD_REQUEST, "unreadable body"),
        };
        return control(&shared, &parts.method, parts.uri.path(), &body);
    }
    drop(body);
    shared.requests.record(0, || RecordedRequest {
        method: parts.method.clone(),
        uri: path_and_query(&parts.uri),
        headers: owned_headers(&parts.headers),
    });
    api(&shared, &parts).await
}

/// The REST API, behind the fault mode and authentication.
async fn api(shared: &Shared, parts: &http::request::Parts) -> Response<Body> {
    let path = parts.uri.path().to_ascii_lowercase();
    if !path.starts_with("/api/") {
        return respond(StatusCode::NOT_FOUND, "text/plain", "not found");
    }
    let mode = *lock(&shared.mode);
    match mode {
        Mode::Down => return service_unavailable(),
        Mode::Slow(delay) => {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shared.until_shutdown() => return service_unavailable(),
            }
        }
        _ => {}
    }
    if let Err(refusal) = authenticate(&shared.settings, &parts.headers) {
        let mut response = api_error(StatusCode::UNAUTHORIZED, refusal);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"AirWatch\""),
        );
        return response;
    }
    if path != SEARCH_PATH.to_ascii_lowercase() {
        return api_error(StatusCode::NOT_FOUND, "no such resource");
    }
    if parts.method != Method::GET {
        let mut response = api_error(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    if !accepts_json(&parts.headers) {
        return api_error(
            StatusCode::NOT_ACCEPTABLE,
            "this server answers application/json only",
        );
    }
    let query = match SearchQuery::parse(parts.uri.query().unwrap_or(""), &shared.settings) {
        Ok(query) => query,
        Err((status, message)) => return api_error(status, &message),
    };
    search(shared, mode, &query)
}

fn service_unavailable() -> Response<Body> {
    let mut response = respond(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/html",
        "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1></body></html>",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// Checks the tenant code and the Basic credentials; the refusal's message otherwise.
fn authenticate(settings: &Settings, headers: &HeaderMap) -> Result<(), &'static str> {
    let tenant_code = headers.get(TENANT_CODE_HEADER).map(HeaderValue::as_bytes);
    if tenant_code != Some(settings.tenant_code.as_bytes()) {
        return Err("the aw-tenant-code header is missing or invalid");
    }
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, encoded)| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .and_then(|decoded| String::from_utf8(decoded).ok());
    let expected = format!(
        "{}:{}",
        settings.credentials.user, settings.credentials.password
    );
    if credentials.as_deref() != Some(expected.as_str()) {
        return Err("the user credentials are missing or invalid");
    }
    Ok(())
}

/// Whether `Accept` is absent or admits JSON.
fn accepts_json(headers: &HeaderMap) -> bool {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    values.is_empty()
        || values
            .iter()
            .flat_map(|value| value.split(','))
            .map(|range| {
                range
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .any(|media| matches!(media.as_str(), "application/json" | "application/*" | "*/*"))
}

/// The parameters of a search.
#[derive(Debug, PartialEq, Eq)]
struct SearchQuery {
    page: u32,
    page_size: u32,
    modified_since: Option<Timestamp>,
}

impl SearchQuery {
    /// Parses the query (parameter names in any case, unknown ones ignored, as ASP.NET binds
    /// them); a status and message for a bad one.
    fn parse(query: &str, settings: &Settings) -> std::result::Result<Self, (StatusCode, String)> {
        let bad = |message: String| (StatusCode::BAD_REQUEST, message);
        let mut parsed = Self {
            page: 0,
            page_size: DEFAULT_PAGE_SIZE,
            modified_since: None,
        };
        for (name, value) in query_pairs(query) {
            match name.as_str() {
                "organizationgroupid" => {
                    let id: u64 = value.parse().map_err(|_| {
                        bad(format!("organizationgroupid {value:?} is not a number"))
                    })?;
                    if id != settings.organization_group_id {
                        return Err((
                            StatusCode::FORBIDDEN,
                            format!("the API user may not read organization group {id}"),
                        ));
                    }
                }
                "page" => {
                    parsed.page = value
                        .parse()
                        .map_err(|_| bad(format!("page {value:?} is not a page number from 0")))?;
                }
                "pagesize" => {
                    parsed.page_size = value
                        .parse()
                        .ok()
                        .filter(|size| (1..=MAX_PAGE_SIZE).contains(size))
                        .ok_or_else(|| {
                            bad(format!(
                                "pagesize {value:?} is not a number from 1 to {MAX_PAGE_SIZE}"
                            ))
                        })?;
                }
                MODIFIED_SINCE_PARAM => {
                    parsed.modified_since =
                        Some(Timestamp::parse_rfc3339(&value).ok_or_else(|| {
                            bad(format!(
                                "modifiedsince {value:?} is not an RFC 3339 date-time"
                            ))
                        })?);
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// The query's parameters: names lower-cased, values percent-decoded (`+` stays `+`).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(name).to_ascii_lowercase(),
                percent_decode(value),
            )
        })
        .collect()
}

/// Decodes `%XX` escapes; malformed escapes stay as they are, invalid UTF-8 is replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The body [`Mode::Garbage`] answers: the start of a result, then nonsense.
const GARBAGE: &str =
    "{\"MEMDevices\": [{\"EASDeviceID\": \"EAS\u{fffd}\u{0}<html><body>Internal error</body>";

fn search(shared: &Shared, mode: Mode, query: &SearchQuery) -> Response<Body> {
    #[derive(Serialize)]
    struct SearchResult<'a> {
        #[serde(rename = "MEMDevices")]
        devices: Vec<MemDevice<'a>>,
        #[serde(rename = "Page")]
        page: u32,
        #[serde(rename = "PageSize")]
        page_size: u32,
        #[serde(rename = "Total")]
        total: usize,
    }
    match mode {
        Mode::Garbage => return respond(StatusCode::OK, JSON, GARBAGE),
        Mode::NoContent => return respond(StatusCode::NO_CONTENT, JSON, Bytes::new()),
        Mode::DownFromPage(first_down) if query.page >= first_down => {
            return service_unavailable();
        }
        Mode::EmptyList => {
            return json(
                StatusCode::OK,
                &SearchResult {
                    devices: Vec::new(),
                    page: query.page,
                    page_size: query.page_size,
                    total: 0,
                },
            );
        }
        _ => {}
    }
    let body = {
        let store = shared.store();
        let (devices, total) = store.search(query.modified_since, query.page, query.page_size);
        serde_json::to_vec(&SearchResult {
            devices: devices.into_iter().map(Device::record).collect(),
            page: query.page,
            page_size: query.page_size,
            total,
        })
    };
    let body = match body {
        Ok(body) => Bytes::from(body),
        Err(error) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    };
    if mode == Mode::TruncatedPage {
        return truncated(body);
    }
    respond(StatusCode::OK, JSON, body)
}

/// A `200` announcing the whole of `body` but sending only its first half before failing, which
/// makes the server abort the connection. The half is flushed (a short pause lets the connection
/// write it) before the failure, so that the client sees a body cut short rather than no answer.
fn truncated(body: Bytes) -> Response<Body> {
    type Item = std::result::Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
    let length = body.len();
    let half = body.slice(..length / 2);
    let frames = futures_util::stream::unfold(Some(half), |state| async move {
        let item: Item = match state {
            Some(half) => Ok(Frame::data(half)),
            None => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err("the page is cut off here by the truncated-page fault".into())
            }
        };
        // After the failure the connection is gone and the stream is not polled again.
        Some((item, None))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// The fault mode as `POST /testbed/mode` names it.
#[derive(Debug, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum ModeSpec {
    Normal,
    Down,
    Garbage,
    Slow { delay_ms: u64 },
    EmptyList,
    NoContent,
    TruncatedPage,
    DownFromPage { page: u32 },
}

impl From<ModeSpec> for Mode {
    fn from(spec: ModeSpec) -> Self {
        match spec {
            ModeSpec::Normal => Mode::Normal,
            ModeSpec::Down => Mode::Down,
            ModeSpec::Garbage => Mode::Garbage,
            ModeSpec::Slow { delay_ms } => Mode::Slow(Duration::from_millis(delay_ms)),
            ModeSpec::EmptyList => Mode::EmptyList,
            ModeSpec::NoContent => Mode::NoContent,
            ModeSpec::TruncatedPage => Mode::TruncatedPage,
            ModeSpec::DownFromPage { page } => Mode::DownFromPage(page),
        }
    }
}

fn mode_json(mode: Mode) -> serde_json::Value {
    match mode {
        Mode::Normal => serde_json::json!({"mode": "normal"}),
        Mode::Down => serde_json::json!({"mode": "down"}),
        Mode::Garbage => serde_json::json!({"mode": "garbage"}),
        Mode::Slow(delay) => serde_json::json!({"mode": "slow", "delay_ms": delay.as_millis()}),
        Mode::EmptyList => serde_json::json!({"mode": "empty_list"}),
        Mode::NoContent => serde_json::json!({"mode": "no_content"}),
        Mode::TruncatedPage => serde_json::json!({"mode": "truncated_page"}),
        Mode::DownFromPage(page) => serde_json::json!({"mode": "down_from_page", "page": page}),
    }
}

/// The test controls under `/testbed/`.
fn control(shared: &Shared, method: &Method, path: &str, body: &Bytes) -> Response<Body> {
    let segments: Vec<String> = path
        .trim_start_matches("/testbed/")
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let not_found = || control_error(StatusCode::NOT_FOUND, "no such test control");
    let not_allowed = || control_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    let unknown = |error: Error| control_error(StatusCode::NOT_FOUND, &error.to_string());
    match segments.as_slice() {
        ["devices"] => match *method {
            Method::GET => {
                let store = shared.store();
                let records: Vec<MemDevice<'_>> =
                    store.devices.iter().map(Device::record).collect();
                json(StatusCode::OK, &records)
            }
            Method::POST => {
                let next_id = shared
                    .store()
                    .devices
                    .iter()
                    .map(|d| d.uem_id)
                    .max()
                    .unwrap_or(0)
                    + 1;
                let device = match Device::parse_one(body, next_id) {
                    Ok(device) => device,
                    Err(error) => {
                        return control_error(StatusCode::BAD_REQUEST, &error_text(&error));
                    }
                };
                match shared.add(device) {
                    Ok(device) => json(StatusCode::CREATED, &device.record()),
                    Err(error) => control_error(StatusCode::CONFLICT, &error.to_string()),
                }
            }
            _ => not_allowed(),
        },
        ["devices", device_id] => match *method {
            Method::GET => match shared.store().get(device_id) {
                Some(device) => json(StatusCode::OK, &device.record()),
                None => unknown(Error::UnknownDevice(device_id.to_string())),
            },
            Method::DELETE => match shared.remove(device_id) {
                Ok(device) => json(StatusCode::OK, &device.record()),
                Err(error) => unknown(error),
            },
            _ => not_allowed(),
        },
        ["devices", device_id, action] => {
            let Some(change) = Change::from_action(action) else {
                return not_found();
            };
            if *method != Method::POST {
                return not_allowed();
            }
            match shared.change(device_id, change.event_type(), |device| {
                change.apply(device)
            }) {
                Ok(device) => json(StatusCode::OK, &device.record()),
                Err(error) => unknown(error),
            }
        }
        ["mode"] => match *method {
            Method::GET => json(StatusCode::OK, &mode_json(*lock(&shared.mode))),
            Method::POST => match serde_json::from_slice::<ModeSpec>(body) {
                Ok(spec) => {
                    let mode = Mode::from(spec);
                    *lock(&shared.mode) = mode;
                    json(StatusCode::OK, &mode_json(mode))
                }
                Err(error) => {
                    control_error(StatusCode::BAD_REQUEST, &format!("not a mode: {error}"))
                }
            },
            _ => not_allowed(),
        },
        ["requests"] if *method == Method::GET => {
            let requests = shared.requests.map(|r| {
                serde_json::json!({
                    "method": r.method.as_str(),
                    "uri": r.uri,
                    "headers": header_pairs(&r.headers),
                })
            });
            json(StatusCode::OK, &requests)
        }
        ["webhook-deliveries"] if *method == Method::GET => {
            let deliveries = match &shared.outbox {
                Some(outbox) => lock(&outbox.deliveries).clone(),
                None => Vec::new(),
            };
            let deliveries: Vec<serde_json::Value> = deliveries
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "event_id": d.event_id,
                        "event_type": d.event_type,
                        "device_id": d.device_id,
                        "outcome": format!("{:?}", d.outcome).to_ascii_lowercase(),
                        "attempts": d.attempts.iter().map(|a| serde_json::json!({
                            "status": a.status.map(|s| s.as_u16()),
                            "error": a.error,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json(StatusCode::OK, &deliveries)
        }
        _ => not_found(),
    }
}

/// An error and its causes on one line, for the answers of the test controls.
fn error_text(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
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

    fn settings() -> Settings {
        Settings {
            credentials: Credentials {
                user: "api".into(),
                password: "pw".into(),
            },
            tenant_code: "T".into(),
            organization_group_id: 7,
            max_body: 1024,
        }
    }

    #[test]
    fn queries_bind_names_in_any_case_and_refuse_bad_values() {
        let settings = settings();
        let query = SearchQuery::parse(
            "OrganizationGroupId=7&PAGE=2&pagesize=50&modifiedsince=2025-01-01T02%3A00%3A00%2B02:00&other=x",
            &settings,
        )
        .unwrap();
        assert_eq!(
            query,
            SearchQuery {
                page: 2,
                page_size: 50,
                modified_since: Timestamp::parse_rfc3339("2025-01-01T00:00:00Z"),
            }
        );
        let defaults = SearchQuery::parse("", &settings).unwrap();
        assert_eq!((defaults.page, defaults.page_size), (0, DEFAULT_PAGE_SIZE));
        for (bad, status) in [
            ("page=-1", StatusCode::BAD_REQUEST),
            ("pagesize=0", StatusCode::BAD_REQUEST),
            ("pagesize=100001", StatusCode::BAD_REQUEST),
            ("modifiedsince=yesterday", StatusCode::BAD_REQUEST),
            ("organizationgroupid=x", StatusCode::BAD_REQUEST),
            ("organizationgroupid=8", StatusCode::FORBIDDEN),
        ] {
            assert_eq!(
                SearchQuery::parse(bad, &settings).unwrap_err().0,
                status,
                "{bad}"
            );
        }
    }

    #[test]
    fn authentication_needs_both_the_tenant_code_and_the_credentials() {
        let settings = settings();
        let mut headers = HeaderMap::new();
        assert!(authenticate(&settings, &headers).is_err());
        headers.insert(TENANT_CODE_HEADER, HeaderValue::from_static("T"));
        assert!(authenticate(&settings, &headers).is_err());
        let basic = crate::harness::basic_auth("api", "pw");
        headers.insert(header::AUTHORIZATION, basic.parse().unwrap());
        assert_eq!(authenticate(&settings, &headers), Ok(()));
        headers.insert(TENANT_CODE_HEADER, HeaderValue::from_static("t"));
        assert!(authenticate(&settings, &headers).is_err());
        headers.insert(TENANT_CODE_HEADER, HeaderValue::from_static("T"));
        let wrong = crate::harness::basic_auth("api", "PW");
        headers.insert(header::AUTHORIZATION, wrong.parse().unwrap());
        assert!(authenticate(&settings, &headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(authenticate(&settings, &headers).is_err());
    }

    #[test]
    fn json_or_anything_is_acceptable_and_xml_alone_is_not() {
        let accept = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(value));
            accepts_json(&headers)
        };
        assert!(accepts_json(&HeaderMap::new()));
        assert!(accept("application/json"));
        assert!(accept("application/json;version=1"));
        assert!(accept("application/xml, */*;q=0.1"));
        assert!(!accept("application/xml"));
    }

    #[test]
    fn percent_decoding_keeps_plus_and_malformed_escapes() {
        assert_eq!(percent_decode("a%20b+c%2"), "a b+c%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn changed_devices_are_found_by_stamp_and_the_rest_by_order() {
        let started = Timestamp::from_unix_micros(1_000);
        let mut store = Store::new(crate::uem::generate(5), started).unwrap();
        let (page, total) = store.search(None, 1, 2);
        let ids: Vec<_> = page.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!((ids, total), (vec!["EASDEV000003", "EASDEV000004"], 5));
        let (page, total) = store.search(None, 3, 2);
        assert_eq!((page.len(), total), (0, 5));
        // Change 4, then 2, then 4 again: the delta lists 2 then 4, each once.
        for id in ["EASDEV000004", "EASDEV000002", "EASDEV000004"] {
            let index = store.index_of(id).unwrap();
            let stamp = store.stamp();
            store.touch(index, stamp);
        }
        let since = started.plus_micros(1);
        let (page, total) = store.search(Some(since), 0, 10);
        let ids: Vec<_> = page.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!((ids, total), (vec!["EASDEV000002", "EASDEV000004"], 2));
        assert_eq!(store.search(Some(started), 0, 10).1, 5, "at the start: all");
        store.remove("EASDEV000002").unwrap();
        let (page, total) = store.search(Some(since), 0, 10);
        assert_eq!((page[0].device_id.as_str(), total), ("EASDEV000004", 1));
        assert_eq!(store.get("EASDEV000005").unwrap().uem_id, 5);
    }

    #[test]
    fn stamps_strictly_increase() {
        let mut store = Store::new(Vec::new(), Timestamp::now().plus_micros(10_000_000)).unwrap();
        let first = store.stamp();
        let second = store.stamp();
        assert!(first > store.started && second > first);
    }
}
