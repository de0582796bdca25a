//! The management console as a [`DeviceSource`]: Workspace ONE UEM's MEM device search, and its
//! change events.
//!
//! `GET {uem_url}/API/mem/memdevices/search?page=P&pagesize=N[&organizationgroupid=G]` with
//! `aw-tenant-code` and Basic credentials, page by page until `Total` devices are read (a short
//! page before that is a truncated answer, refused); delta syncs add `modifiedsince=<RFC 3339>`.
//! Each `MEMDevice` becomes a [`DeviceRecord`]; fields the console leaves out take the values that
//! keep the gate shut (unknown enrollment and compliance, not managed).
//!
//! Once the first page has told how many devices there are, the next pages are asked for
//! [`PAGES_IN_FLIGHT`] at a time, so that the console prepares pages while the gateway parses
//! the ones it has (a million devices: ≈ 2,000 pages at the default size). The strings a sync
//! sees again and again (platform, model, OS version, device type, mail client, and a UPN that
//! is also the e-mail address) are kept once ([`Interner`]).

use crate::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use crate::sync::{DeviceSource, SourceError};
use crate::view::{Change, View};
use bytes::Bytes;
use ews_proxy_core::upstream::UpstreamClient;
use futures_util::{StreamExt, stream};
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How to reach the console (`[compliance]` `uem_*` keys).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UemSettings {
    /// The API base, e.g. `https://as123.awmdm.com`.
    pub url: String,
    /// The `aw-tenant-code` API key.
    pub tenant_code: String,
    /// The API user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The organization group to search; the API user's own when absent.
    #[serde(default)]
    pub organization_group_id: Option<u64>,
    /// Devices per page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// How long one page may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_page_size() -> u32 {
    500
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl std::fmt::Debug for UemSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UemSettings")
            .field("url", &self.url)
            .field("tenant_code", &"<redacted>")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("organization_group_id", &self.organization_group_id)
            .field("page_size", &self.page_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Pages asked for at once after the first.
pub const PAGES_IN_FLIGHT: usize = 4;

/// Search answers larger than this are refused (a page of 500 devices is about 400 KiB).
const MAX_PAGE_BYTES: usize = 16 << 20;

/// The console client; cheap to clone.
#[derive(Clone, Debug)]
pub struct UemClient {
    client: UpstreamClient,
    settings: Arc<UemSettings>,
    authorization: HeaderValue,
    tenant: HeaderValue,
}

/// Why the console settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("uem setting {key} is invalid: {problem}")]
pub struct UemSettingsError {
    /// The key.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl UemClient {
    /// A client for the console at `settings.url` through `client`.
    pub fn new(client: UpstreamClient, settings: UemSettings) -> Result<Self, UemSettingsError> {
        use base64::Engine as _;
        let invalid = |key, problem: &str| UemSettingsError {
            key,
            problem: problem.to_owned(),
        };
        let uri: Uri = settings
            .url
            .parse()
            .map_err(|_| invalid("uem_url", "not a URL"))?;
        if uri.scheme_str().is_none() || uri.host().is_none() {
            return Err(invalid(
                "uem_url",
                "must be http:// or https:// with a host",
            ));
        }
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", settings.user, settings.password));
        let mut authorization = HeaderValue::from_str(&format!("Basic {credentials}"))
            .map_err(|_| invalid("uem_user", "not usable in a header"))?;
        authorization.set_sensitive(true);
        let mut tenant = HeaderValue::from_str(&settings.tenant_code)
            .map_err(|_| invalid("uem_tenant_code", "not usable in a header"))?;
        tenant.set_sensitive(true);
        Ok(UemClient {
            client,
            settings: Arc::new(settings),
            authorization,
            tenant,
        })
    }

    async fn search(
        &self,
        since: Option<SystemTime>,
        held: Option<&View>,
    ) -> Result<Vec<Arc<DeviceRecord>>, SourceError> {
        let page_size = u64::from(self.settings.page_size);
        let first = self.page(0, since).await?;
        let total = page_total(0, &first)?;
        let pages = u32::try_from(total.div_ceil(page_size).max(1)).map_err(|_| {
            SourceError::Garbage(format!("{total} devices announced: too many pages"))
        })?;
        // Capped: the announced total is the console's word, not yet a fact.
        let mut devices = Vec::with_capacity(total.min(1 << 22) as usize);
        let mut interner = Interner::default();
        // Each page is parsed where it is kept, its strings borrowed from its body.
        let mut keep = |page: u32, body: Option<Bytes>| {
            let result = match &body {
                Some(body) => parse_page(page, body)?,
                None => SearchResult::default(),
            };
            let received = result.devices.len() as u64;
            let read = u64::from(page) * page_size + received;
            if read < total && received < page_size {
                return Err(SourceError::Garbage(format!(
                    "page {page} holds {received} devices, but {read} of {total} were read"
                )));
            }
            devices.extend(
                result
                    .devices
                    .into_iter()
                    .filter_map(|device| device.into_record(&mut interner))
                    .map(|record| match held {
                        Some(view) => view.share(record),
                        None => Arc::new(record),
                    }),
            );
            Ok(())
        };
        keep(0, first)?;
        let mut rest = stream::iter(1..pages)
            .map(|page| async move { (page, self.page(page, since).await) })
            .buffered(PAGES_IN_FLIGHT);
        while let Some((page, result)) = rest.next().await {
            keep(page, result?)?;
        }
        Ok(devices)
    }

    async fn page(
        &self,
        page: u32,
        since: Option<SystemTime>,
    ) -> Result<Option<Bytes>, SourceError> {
        let base = self.settings.url.trim_end_matches('/');
        let mut url = format!(
            "{base}/API/mem/memdevices/search?page={page}&pagesize={}",
            self.settings.page_size
        );
        if let Some(group) = self.settings.organization_group_id {
            url.push_str(&format!("&organizationgroupid={group}"));
        }
        if let Some(since) = since {
            url.push_str("&modifiedsince=");
            url.push_str(&humantime::format_rfc3339_seconds(since).to_string());
        }
        let request = Request::get(url)
            .header(header::ACCEPT, "application/json")
            .header("aw-tenant-code", self.tenant.clone())
            .header(header::AUTHORIZATION, self.authorization.clone())
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|e| SourceError::Garbage(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .inner()
                .request(request)
                .await
                .map_err(|e| SourceError::Unreachable(Box::new(e)))?;
            let status = response.status();
            // The console answers a search that matches nothing with 204 and no body.
            if status == StatusCode::NO_CONTENT {
                return Ok(None);
            }
            if status != StatusCode::OK {
                return Err(SourceError::Status {
                    status: status.as_u16(),
                });
            }
            let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
                .collect()
                .await
                .map_err(SourceError::Unreachable)?
                .to_bytes();
            Ok(Some(body))
        };
        match tokio::time::timeout(self.settings.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(SourceError::Unreachable(
                format!("no answer within {:?}", self.settings.timeout).into(),
            )),
        }
    }
}

impl DeviceSource for UemClient {
    async fn full(&self) -> Result<Vec<Arc<DeviceRecord>>, SourceError> {
        self.search(None, None).await
    }

    async fn full_reusing(&self, held: Arc<View>) -> Result<Vec<Arc<DeviceRecord>>, SourceError> {
        self.search(None, Some(&held)).await
    }

    async fn changed_since(&self, since: SystemTime) -> Result<Vec<DeviceRecord>, SourceError> {
        let changed = self.search(Some(since), None).await?;
        Ok(changed.into_iter().map(Arc::unwrap_or_clone).collect())
    }
}

/// A search page (no body: an empty page, as a 204 answers).
fn parse_page(page: u32, body: &[u8]) -> Result<SearchResult<'_>, SourceError> {
    serde_json::from_slice(body).map_err(|e| SourceError::Garbage(format!("page {page}: {e}")))
}

/// The total a page announces.
fn page_total(page: u32, body: &Option<Bytes>) -> Result<u64, SourceError> {
    #[derive(Deserialize)]
    struct Total {
        #[serde(rename = "Total")]
        total: u64,
    }
    match body {
        // Read apart from the devices (a skim: serde_json skips the rest without building it).
        Some(body) => serde_json::from_slice::<Total>(body)
            .map(|t| t.total)
            .map_err(|e| SourceError::Garbage(format!("page {page}: {e}"))),
        None => Ok(0),
    }
}

#[derive(Debug, Default, Deserialize)]
struct SearchResult<'a> {
    #[serde(rename = "MEMDevices", default, borrow)]
    devices: Vec<MemDevice<'a>>,
    #[serde(rename = "Total")]
    total: u64,
}

/// A string as the console sent it: borrowed from the page's body unless it had escapes.
type Text<'a> = Option<Cow<'a, str>>;

/// `Managed` arrives as a boolean or as `"TRUE"`/`"false"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Flag<'a> {
    Bool(bool),
    Text(#[serde(borrow)] Cow<'a, str>),
    Other(serde::de::IgnoredAny),
}

/// A MEMDevice record as the console sends it; every field optional. Its strings borrow from
/// the page's body: a full sync of a million devices allocates only what the records keep.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MemDevice<'a> {
    #[serde(rename = "EASDeviceID", borrow)]
    eas_device_id: Text<'a>,
    #[serde(rename = "MEMDeviceID")]
    mem_device_id: Option<u64>,
    #[serde(rename = "DeviceId")]
    device_id: Option<u64>,
    #[serde(rename = "EmailAddress", borrow)]
    email_address: Text<'a>,
    #[serde(rename = "UserPrincipalName", borrow)]
    user_principal_name: Text<'a>,
    #[serde(rename = "Managed", borrow)]
    managed: Option<Flag<'a>>,
    #[serde(rename = "EasDeviceType", borrow)]
    eas_device_type: Text<'a>,
    #[serde(rename = "Platform", borrow)]
    platform: Text<'a>,
    #[serde(rename = "Model", borrow)]
    model: Text<'a>,
    #[serde(rename = "OperatingSystem", borrow)]
    operating_system: Text<'a>,
    #[serde(rename = "EnrollmentStatus", borrow)]
    enrollment_status: Text<'a>,
    #[serde(rename = "ComplianceStatus", borrow)]
    compliance_status: Text<'a>,
    #[serde(rename = "CompromisedStatus")]
    compromised_status: Option<bool>,
    #[serde(rename = "ManagedEmailClient")]
    managed_email_client: Option<bool>,
    #[serde(rename = "IsEncrypted")]
    is_encrypted: Option<bool>,
    #[serde(rename = "ActiveSyncProfileInstalled")]
    activesync_profile_installed: Option<bool>,
    #[serde(rename = "LastSeen", borrow)]
    last_seen: Text<'a>,
    #[serde(rename = "MailClient", borrow)]
    mail_client: Text<'a>,
}

/// Whether `text`, ignoring case and everything but letters and digits, is one of `names`
/// (lower-case letters and digits): `Enterprise Wiped`, `enterprise_wiped` and
/// `EnterpriseWiped` are the same state.
fn is_one_of(text: &str, names: &[&str]) -> bool {
    let mut letters = text
        .bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| b.to_ascii_lowercase());
    let mut buffer = [0u8; 32];
    let mut len = 0;
    for byte in letters.by_ref() {
        let Some(slot) = buffer.get_mut(len) else {
            return false;
        };
        *slot = byte;
        len += 1;
    }
    names.iter().any(|name| name.as_bytes() == &buffer[..len])
}

/// One shared copy of each string a sync meets many times.
#[derive(Debug, Default)]
pub(crate) struct Interner(std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>);

impl Interner {
    /// Past this many distinct strings, new ones are no longer kept (a console sending a
    /// different model on every device must not grow the set without end).
    const MAX: usize = 65_536;

    fn share(&mut self, text: Text<'_>) -> Option<Arc<str>> {
        let text = text?;
        if let Some(shared) = self.0.get(&*text) {
            return Some(shared.clone());
        }
        let shared: Arc<str> = text.into();
        if self.0.len() < Self::MAX {
            self.0.insert(shared.clone());
        }
        Some(shared)
    }
}

impl MemDevice<'_> {
    /// The record, or `None` for an entry without an EAS device id (not a mail device).
    fn into_record(self, interner: &mut Interner) -> Option<DeviceRecord> {
        let id = self.eas_device_id.filter(|id| !id.trim().is_empty())?;
        let enrollment = match self.enrollment_status.as_deref() {
            Some(s) if is_one_of(s, &["enrolled"]) => Enrollment::Enrolled,
            Some(s) if is_one_of(s, &["unenrolled", "unenrolledbyuser", "unenrolledbyadmin"]) => {
                Enrollment::Unenrolled
            }
            Some(s) if is_one_of(s, &["enterprisewiped", "enterprisewipe"]) => {
                Enrollment::EnterpriseWiped
            }
            Some(s) if is_one_of(s, &["devicewiped", "devicewipe"]) => Enrollment::DeviceWiped,
            _ => Enrollment::Unknown,
        };
        let compliance = match self.compliance_status.as_deref() {
            Some(s) if is_one_of(s, &["compliant"]) => ComplianceStatus::Compliant,
            Some(s) if is_one_of(s, &["noncompliant"]) => ComplianceStatus::NonCompliant,
            Some(s) if is_one_of(s, &["pending", "pendingcompliancecheck"]) => {
                ComplianceStatus::Pending
            }
            _ => ComplianceStatus::Unknown,
        };
        let managed = match self.managed {
            Some(Flag::Bool(b)) => b,
            Some(Flag::Text(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let last_seen = self
            .last_seen
            .as_deref()
            .and_then(|t| {
                humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
                    .ok()
                    .or_else(|| humantime::parse_rfc3339(t).ok())
            })
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let email: Option<Arc<str>> = self.email_address.map(Arc::from);
        // Most UPNs are the e-mail address: one string for both then.
        let user = match self.user_principal_name {
            Some(upn) if email.as_deref() == Some(&*upn) => email.clone(),
            Some(upn) => Some(upn.into()),
            None => email.clone(),
        };
        Some(DeviceRecord {
            device_id: DeviceId::new(id.trim()),
            uem_id: self.device_id.or(self.mem_device_id),
            user,
            email,
            platform: interner.share(self.platform),
            model: interner.share(self.model),
            os_version: interner.share(self.operating_system),
            eas_device_type: interner.share(self.eas_device_type),
            mail_client: interner.share(self.mail_client),
            enrollment,
            compromised: self.compromised_status.unwrap_or(false),
            compliance,
            managed,
            managed_email_client: self.managed_email_client.unwrap_or(false),
            encrypted: self.is_encrypted,
            activesync_profile: self.activesync_profile_installed,
            last_seen,
        })
    }
}

/// Reads one page of the console's device search (`{"MEMDevices": […], "Total": n}`) as
/// [`UemClient`] does: the records of the devices that have an EAS device id, and the total the
/// console announces.
///
/// Public so the page parser can be fuzzed and replayed (`crates/fuzz-targets`).
///
/// # Errors
///
/// A description of why the body is not a search page.
pub fn parse_search_page(body: &[u8]) -> Result<(Vec<DeviceRecord>, u64), String> {
    let page: SearchResult<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not a search page: {e}"))?;
    let mut interner = Interner::default();
    let records = page
        .devices
        .into_iter()
        .filter_map(|device| device.into_record(&mut interner))
        .collect();
    Ok((records, page.total))
}

#[derive(Debug, Deserialize)]
struct ChangeEvent<'a> {
    event_type: String,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default, borrow)]
    device: Option<MemDevice<'a>>,
}

/// Turns a change event from the console's webhook into view changes.
///
/// `{"event_type": "device.wiped", "device_id": "…", "device": {MEMDevice}}`; a
/// `device.deleted` event removes the device.
pub fn parse_change_event(body: &[u8]) -> Result<Vec<Change>, String> {
    let event: ChangeEvent<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not a change event: {e}"))?;
    if event.event_type == "device.deleted" {
        let id = event
            .device_id
            .or_else(|| {
                event
                    .device
                    .and_then(|d| d.eas_device_id.map(Cow::into_owned))
            })
            .ok_or("device.deleted without a device_id")?;
        return Ok(vec![Change::Remove(DeviceId::new(&id))]);
    }
    let device = event
        .device
        .ok_or_else(|| format!("{} without a device", event.event_type))?;
    let record = device
        .into_record(&mut Interner::default())
        .ok_or("the device has no EASDeviceID")?;
    Ok(vec![Change::Upsert(record)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIPED: &str = r#"{"event_id":"e1","event_type":"device.wiped","occurred_at":"2026-01-01T00:00:00Z","device_id":"EASDEV1",
        "device":{"MEMDeviceID":7,"EASDeviceID":"easdev1","EmailAddress":"alice@test.local","Status":"Blocked","Managed":"TRUE",
        "EasDeviceType":"iPhone","Platform":"Apple","DeviceId":1,"UserPrincipalName":"alice@test.local","Model":"iPhone",
        "OperatingSystem":"17.1","EnrollmentStatus":"EnterpriseWiped","ComplianceStatus":"NonCompliant","CompromisedStatus":false,
        "ManagedEmailClient":true,"IsEncrypted":true,"ActiveSyncProfileInstalled":true,"LastSeen":"2026-01-01T00:00:00Z"}}"#;

    #[test]
    fn wipe_event_becomes_an_upsert_of_a_wiped_record() {
        let changes = parse_change_event(WIPED.as_bytes()).unwrap();
        let [Change::Upsert(record)] = &changes[..] else {
            panic!("{changes:?}")
        };
        assert_eq!(record.device_id, DeviceId::new("EASDEV1"));
        assert_eq!(record.enrollment, Enrollment::EnterpriseWiped);
        assert_eq!(record.compliance, ComplianceStatus::NonCompliant);
        assert!(record.managed);
        assert_eq!(record.uem_id, Some(1));
        assert_eq!(record.last_seen, Some(1_767_225_600));
    }

    #[test]
    fn deleted_event_removes_and_garbage_is_an_error() {
        let changes =
            parse_change_event(br#"{"event_type":"device.deleted","device_id":"x9"}"#).unwrap();
        assert_eq!(changes, [Change::Remove(DeviceId::new("X9"))]);
        assert!(parse_change_event(b"{not json").is_err());
        assert!(parse_change_event(br#"{"event_type":"device.wiped"}"#).is_err());
        assert!(
            parse_change_event(br#"{"event_type":"device.wiped","device":{"Model":"x"}}"#).is_err()
        );
    }

    #[test]
    fn a_page_is_read_with_escapes_spellings_and_shared_strings() {
        let body = br#"{"Total":3,"MEMDevices":[
            {"EASDeviceID":"a\u0031","EmailAddress":"al\u0069ce@x","UserPrincipalName":"alice@x",
             "Managed":"TRUE","Platform":"Apple","EnrollmentStatus":"Enterprise Wiped","ComplianceStatus":"non_compliant"},
            {"EASDeviceID":"B2","EmailAddress":"bob@x","UserPrincipalName":"Bob@Corp","Managed":true,
             "Platform":"Apple","EnrollmentStatus":"enrolled","ComplianceStatus":"PendingComplianceCheck"},
            {"EASDeviceID":"C3","Managed":{"odd":1},"EnrollmentStatus":"a-very-long-status-name-that-fits-no-buffer-at-all"}
        ]}"#;
        let (records, total) = parse_search_page(body).unwrap();
        assert_eq!(total, 3);
        let [a, b, c] = &records[..] else {
            panic!("{records:?}")
        };
        assert_eq!(a.device_id.as_str(), "A1", "escaped, then upper-cased");
        assert_eq!(a.user.as_deref(), Some("alice@x"));
        assert!(
            Arc::ptr_eq(a.user.as_ref().unwrap(), a.email.as_ref().unwrap()),
            "a UPN equal to the e-mail address is the same string"
        );
        assert!(a.managed && b.managed && !c.managed);
        assert_eq!(a.enrollment, Enrollment::EnterpriseWiped);
        assert_eq!(a.compliance, ComplianceStatus::NonCompliant);
        assert_eq!(b.compliance, ComplianceStatus::Pending);
        assert_eq!(b.user.as_deref(), Some("Bob@Corp"));
        assert_eq!(c.enrollment, Enrollment::Unknown);
        assert!(
            Arc::ptr_eq(a.platform.as_ref().unwrap(), b.platform.as_ref().unwrap()),
            "a platform is kept once per page"
        );
    }

    #[test]
    fn missing_fields_keep_the_gate_shut() {
        let record = MemDevice {
            eas_device_id: Some("D".into()),
            ..Default::default()
        }
        .into_record(&mut Interner::default())
        .unwrap();
        assert_eq!(record.enrollment, Enrollment::Unknown);
        assert_eq!(record.compliance, ComplianceStatus::Unknown);
        assert!(!record.managed);
        let decision = crate::policy::PolicySettings::default().decide(
            Some(&record),
            None,
            &Default::default(),
            0,
        );
        assert!(!decision.is_allowed());
    }
}
