//! Devices as the UEM console holds them, the devices file, and the MEMDevice records the API
//! serves.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::time::Timestamp;
use crate::error::{Error, Result};

/// Where a device stands with the console's enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enrollment {
    /// Enrolled and managed.
    #[default]
    Enrolled,
    /// Removed from management (by the user or the administrator).
    Unenrolled,
    /// Enterprise-wiped: corporate data and management removed, personal data kept.
    EnterpriseWiped,
    /// Wiped to factory settings.
    DeviceWiped,
}

impl Enrollment {
    /// The value of the record's `EnrollmentStatus`: `Enrolled`, `Unenrolled`,
    /// `EnterpriseWiped` or `DeviceWiped`.
    pub fn as_uem_str(self) -> &'static str {
        match self {
            Self::Enrolled => "Enrolled",
            Self::Unenrolled => "Unenrolled",
            Self::EnterpriseWiped => "EnterpriseWiped",
            Self::DeviceWiped => "DeviceWiped",
        }
    }
}

/// The console's compliance verdict for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compliance {
    /// Meets every compliance policy.
    #[default]
    Compliant,
    /// Fails at least one compliance policy.
    #[serde(alias = "non_compliant")]
    Noncompliant,
    /// Not evaluated yet (e.g. just enrolled).
    Pending,
    /// Not evaluated and not to be (e.g. unenrolled).
    NotAvailable,
}

impl Compliance {
    /// The value of the record's `ComplianceStatus`: `Compliant`, `NonCompliant`, `Pending` or
    /// `NotAvailable`.
    pub fn as_uem_str(self) -> &'static str {
        match self {
            Self::Compliant => "Compliant",
            Self::Noncompliant => "NonCompliant",
            Self::Pending => "Pending",
            Self::NotAvailable => "NotAvailable",
        }
    }
}

/// A device the console knows, keyed by its EAS device id.
///
/// Fields left `None` are derived when the record is served (see each field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The Exchange ActiveSync device id (`EASDeviceID`), the key of every lookup.
    pub device_id: String,
    /// The console's device id, served as both `MEMDeviceID` and `DeviceId`.
    pub uem_id: u64,
    /// The enrolled user's UPN (`UserPrincipalName`).
    pub user: String,
    /// The user's e-mail address (`EmailAddress`); the UPN when `None`.
    pub email: Option<String>,
    /// The user name (`UserName`); the UPN's local part when `None`.
    pub user_name: Option<String>,
    /// The friendly name (`FriendlyName`); `"<user name> <model> <platform> <os version>"` when
    /// `None`.
    pub friendly_name: Option<String>,
    /// The platform (`Platform`), e.g. `iOS`, `Android`; served only while the device is managed,
    /// as the reference says.
    pub platform: Arc<str>,
    /// The model (`Model`), e.g. `iPhone`.
    pub model: Arc<str>,
    /// The OS version (`OperatingSystem`), e.g. `17.1`.
    pub os_version: Arc<str>,
    /// The EAS device type (`EasDeviceType`); from the platform and model when `None` (`iPhone`,
    /// `iPad`, `Android`, else the platform).
    pub eas_device_type: Option<Arc<str>>,
    /// Enrollment (`EnrollmentStatus`; `Managed` is `TRUE` only while enrolled).
    pub enrollment: Enrollment,
    /// Compliance (`ComplianceStatus`).
    pub compliance: Compliance,
    /// Jailbroken or rooted (`CompromisedStatus`).
    pub compromised: bool,
    /// Whether the mail client is one the console manages (`ManagedEmailClient`).
    pub managed_email_client: bool,
    /// Whether the device's storage is encrypted (`IsEncrypted`).
    pub encrypted: bool,
    /// Whether the console's ActiveSync profile is installed (`ActiveSyncProfileInstalled`).
    pub activesync_profile: bool,
    /// When the device last checked in (`LastSeen`).
    pub last_seen: Timestamp,
    /// The MEM `Status` (`Allowed` / `Blocked`); derived when `None`: `Allowed` when enrolled,
    /// compliant and not compromised, else `Blocked`.
    pub status: Option<String>,
    /// The MEM `Reason`; derived from the state when `None`.
    pub reason: Option<String>,
    /// When the server last changed the device (`LastModified`). The server sets it: the start
    /// time for the devices it starts with, a fresh, strictly increasing stamp on every change.
    pub modified: Timestamp,
}

/// The defaults of a device not saying otherwise.
const DEFAULT_PLATFORM: &str = "iOS";
const DEFAULT_MODEL: &str = "iPhone";
const DEFAULT_OS_VERSION: &str = "17.1";

impl Device {
    /// An enrolled, compliant, uncompromised, encrypted iPhone on iOS 17.1 with a managed mail
    /// client and the ActiveSync profile, last seen now.
    pub fn new(device_id: &str, uem_id: u64, user: &str) -> Self {
        let now = Timestamp::now();
        Self {
            device_id: device_id.to_string(),
            uem_id,
            user: user.to_string(),
            email: None,
            user_name: None,
            friendly_name: None,
            platform: DEFAULT_PLATFORM.into(),
            model: DEFAULT_MODEL.into(),
            os_version: DEFAULT_OS_VERSION.into(),
            eas_device_type: None,
            enrollment: Enrollment::Enrolled,
            compliance: Compliance::Compliant,
            compromised: false,
            managed_email_client: true,
            encrypted: true,
            activesync_profile: true,
            last_seen: now,
            status: None,
            reason: None,
            modified: now,
        }
    }

    /// Parses a devices file: a JSON array of objects with `device_id` and `user` and optionally
    /// `uem_id` (next free id when absent), `email`, `user_name`, `friendly_name`, `platform`,
    /// `model`, `os_version`, `eas_device_type`, `enrollment` (`enrolled`, `unenrolled`,
    /// `enterprise_wiped`, `device_wiped`), `compliance` (`compliant`, `noncompliant`,
    /// `pending`, `not_available`), `compromised`, `managed_email_client`, `encrypted`,
    /// `activesync_profile`, `last_seen` (RFC 3339), `status` and `reason`.
    ///
    /// # Errors
    ///
    /// [`Error::DevicesFile`] if the JSON is not such an array (unknown fields included),
    /// [`Error::InvalidDevice`] for a bad `last_seen` or a device id given twice.
    pub fn parse_list(json: &str) -> Result<Vec<Device>> {
        let specs: Vec<DeviceSpec> = serde_json::from_str(json).map_err(Error::DevicesFile)?;
        let mut next_id = specs.iter().filter_map(|s| s.uem_id).max().unwrap_or(0) + 1;
        let mut seen = HashSet::new();
        let mut devices = Vec::with_capacity(specs.len());
        for spec in specs {
            if !seen.insert(spec.device_id.clone()) {
                return Err(Error::InvalidDevice(format!(
                    "device {} is listed twice",
                    spec.device_id
                )));
            }
            let uem_id = spec.uem_id.unwrap_or_else(|| {
                next_id += 1;
                next_id - 1
            });
            devices.push(spec.into_device(uem_id)?);
        }
        Ok(devices)
    }

    /// Reads and parses a devices file; see [`Device::parse_list`].
    ///
    /// # Errors
    ///
    /// [`Error::File`] if it cannot be read, else those of [`Device::parse_list`].
    pub fn load_list(path: &Path) -> Result<Vec<Device>> {
        Self::parse_list(&crate::pki::read(path)?)
    }

    /// Parses one device object of the devices file format, given `uem_id` if it names none.
    pub(crate) fn parse_one(json: &[u8], uem_id: u64) -> Result<Device> {
        let spec: DeviceSpec = serde_json::from_slice(json).map_err(Error::DevicesFile)?;
        let uem_id = spec.uem_id.unwrap_or(uem_id);
        spec.into_device(uem_id)
    }

    /// Whether the console manages the device (`Managed` is `TRUE`): while it is enrolled.
    pub fn managed(&self) -> bool {
        self.enrollment == Enrollment::Enrolled
    }

    /// The e-mail address served.
    pub fn email_address(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.user)
    }

    /// The user name served.
    pub fn user_name(&self) -> &str {
        match &self.user_name {
            Some(name) => name,
            None => self.user.split('@').next().unwrap_or(&self.user),
        }
    }

    /// The friendly name served.
    pub fn friendly_name(&self) -> String {
        match &self.friendly_name {
            Some(name) => name.clone(),
            None => format!(
                "{} {} {} {}",
                self.user_name(),
                self.model,
                self.platform,
                self.os_version
            ),
        }
    }

    /// The EAS device type served.
    pub fn eas_device_type(&self) -> &str {
        if let Some(kind) = &self.eas_device_type {
            return kind;
        }
        let platform = self.platform.to_ascii_lowercase();
        if platform == "ios" || platform == "apple" {
            if self.model.to_ascii_lowercase().contains("ipad") {
                "iPad"
            } else {
                "iPhone"
            }
        } else if platform == "android" {
            "Android"
        } else {
            &self.platform
        }
    }

    /// The MEM `Status` served: `Allowed` or `Blocked` unless set.
    pub fn status(&self) -> &str {
        match &self.status {
            Some(status) => status,
            None if self.in_good_standing() => "Allowed",
            None => "Blocked",
        }
    }

    /// The MEM `Reason` served, unless set: `Compliant`, or what keeps the device out.
    pub fn reason(&self) -> &str {
        if let Some(reason) = &self.reason {
            return reason;
        }
        match (self.enrollment, self.compromised, self.compliance) {
            (Enrollment::EnterpriseWiped, _, _) => "Enterprise Wiped",
            (Enrollment::DeviceWiped, _, _) => "Device Wiped",
            (Enrollment::Unenrolled, _, _) => "Unmanaged Device",
            (Enrollment::Enrolled, true, _) => "Device Compromised",
            (Enrollment::Enrolled, false, Compliance::Compliant) => "Compliant",
            (Enrollment::Enrolled, false, Compliance::Noncompliant) => "Non-Compliant",
            (Enrollment::Enrolled, false, _) => "Compliance Pending",
        }
    }

    fn in_good_standing(&self) -> bool {
        self.managed() && self.compliance == Compliance::Compliant && !self.compromised
    }

    /// The record the API serves for this device.
    pub(crate) fn record(&self) -> MemDevice<'_> {
        let managed = self.managed();
        MemDevice {
            mem_device_id: self.uem_id,
            eas_device_id: &self.device_id,
            email_address: self.email_address(),
            friendly_name: self.friendly_name(),
            status: self.status(),
            reason: self.reason(),
            managed: if managed { "TRUE" } else { "FALSE" },
            eas_device_type: self.eas_device_type(),
            platform: managed.then_some(&*self.platform),
            device_id: self.uem_id,
            user_name: self.user_name(),
            user_principal_name: &self.user,
            model: &self.model,
            operating_system: &self.os_version,
            enrollment_status: self.enrollment.as_uem_str(),
            compliance_status: self.compliance.as_uem_str(),
            compromised_status: self.compromised,
            managed_email_client: self.managed_email_client,
            is_encrypted: self.encrypted,
            activesync_profile_installed: self.activesync_profile,
            last_seen: self.last_seen.to_string(),
            last_modified: self.modified.to_string(),
        }
    }
}

/// `n` devices with deterministic ids, for benchmarks and scale tests: device `i` (from 1) is
/// `EASDEV<i, six digits or more>` (`EASDEV000001`…), UEM id `i`, user `user<i>@test.local`;
/// odd `i` are iPhones on iOS 17.1, even `i` Pixel 8 phones on Android 14; every tenth is
/// non-compliant, the rest compliant; all enrolled, last seen now.
///
/// ```
/// let devices = seg_testbed::uem::generate(20);
/// assert_eq!(devices[0].device_id, "EASDEV000001");
/// assert_eq!(devices[19].user, "user000020@test.local");
/// ```
pub fn generate(n: usize) -> Vec<Device> {
    let now = Timestamp::now();
    let ios: (Arc<str>, Arc<str>, Arc<str>) = ("iOS".into(), "iPhone".into(), "17.1".into());
    let android: (Arc<str>, Arc<str>, Arc<str>) = ("Android".into(), "Pixel 8".into(), "14".into());
    (1..=n)
        .map(|i| {
            let (platform, model, os_version) = if i % 2 == 1 { &ios } else { &android };
            Device {
                device_id: format!("EASDEV{i:06}"),
                uem_id: i as u64,
                user: format!("user{i:06}@test.local"),
                email: None,
                user_name: None,
                friendly_name: None,
                platform: platform.clone(),
                model: model.clone(),
                os_version: os_version.clone(),
                eas_device_type: None,
                enrollment: Enrollment::Enrolled,
                compliance: if i % 10 == 0 {
                    Compliance::Noncompliant
                } else {
                    Compliance::Compliant
                },
                compromised: false,
                managed_email_client: true,
                encrypted: true,
                activesync_profile: true,
                last_seen: now,
                status: None,
                reason: None,
                modified: now,
            }
        })
        .collect()
}

/// One object of the devices file (and of `POST /testbed/devices`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceSpec {
    device_id: String,
    #[serde(default)]
    uem_id: Option<u64>,
    user: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    user_name: Option<String>,
    #[serde(default)]
    friendly_name: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    os_version: Option<String>,
    #[serde(default)]
    eas_device_type: Option<String>,
    #[serde(default)]
    enrollment: Enrollment,
    #[serde(default)]
    compliance: Compliance,
    #[serde(default)]
    compromised: bool,
    #[serde(default = "yes")]
    managed_email_client: bool,
    #[serde(default = "yes")]
    encrypted: bool,
    #[serde(default = "yes")]
    activesync_profile: bool,
    #[serde(default)]
    last_seen: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

fn yes() -> bool {
    true
}

impl DeviceSpec {
    fn into_device(self, uem_id: u64) -> Result<Device> {
        if self.device_id.is_empty() {
            return Err(Error::InvalidDevice(
                "a device has an empty device_id".into(),
            ));
        }
        let mut device = Device::new(&self.device_id, uem_id, &self.user);
        if let Some(text) = &self.last_seen {
            device.last_seen = Timestamp::parse_rfc3339(text).ok_or_else(|| {
                Error::InvalidDevice(format!(
                    "device {}: last_seen {text:?} is not an RFC 3339 date-time",
                    self.device_id
                ))
            })?;
        }
        device.email = self.email;
        device.user_name = self.user_name;
        device.friendly_name = self.friendly_name;
        if let Some(platform) = self.platform {
            device.platform = platform.into();
        }
        if let Some(model) = self.model {
            device.model = model.into();
        }
        if let Some(os_version) = self.os_version {
            device.os_version = os_version.into();
        }
        device.eas_device_type = self.eas_device_type.map(Into::into);
        device.enrollment = self.enrollment;
        device.compliance = self.compliance;
        device.compromised = self.compromised;
        device.managed_email_client = self.managed_email_client;
        device.encrypted = self.encrypted;
        device.activesync_profile = self.activesync_profile;
        device.status = self.status;
        device.reason = self.reason;
        Ok(device)
    }
}

/// The MEMDevice record as served: the reference's fields first, then this stand-in's
/// compliance fields.
#[derive(Debug, Serialize)]
pub(crate) struct MemDevice<'a> {
    #[serde(rename = "MEMDeviceID")]
    mem_device_id: u64,
    #[serde(rename = "EASDeviceID")]
    eas_device_id: &'a str,
    #[serde(rename = "EmailAddress")]
    email_address: &'a str,
    #[serde(rename = "FriendlyName")]
    friendly_name: String,
    #[serde(rename = "Status")]
    status: &'a str,
    #[serde(rename = "Reason")]
    reason: &'a str,
    #[serde(rename = "Managed")]
    managed: &'static str,
    #[serde(rename = "EasDeviceType")]
    eas_device_type: &'a str,
    #[serde(rename = "Platform")]
    platform: Option<&'a str>,
    #[serde(rename = "DeviceId")]
    device_id: u64,
    #[serde(rename = "UserName")]
    user_name: &'a str,
    #[serde(rename = "UserPrincipalName")]
    user_principal_name: &'a str,
    #[serde(rename = "Model")]
    model: &'a str,
    #[serde(rename = "OperatingSystem")]
    operating_system: &'a str,
    #[serde(rename = "EnrollmentStatus")]
    enrollment_status: &'static str,
    #[serde(rename = "ComplianceStatus")]
    compliance_status: &'static str,
    #[serde(rename = "CompromisedStatus")]
    compromised_status: bool,
    #[serde(rename = "ManagedEmailClient")]
    managed_email_client: bool,
    #[serde(rename = "IsEncrypted")]
    is_encrypted: bool,
    #[serde(rename = "ActiveSyncProfileInstalled")]
    activesync_profile_installed: bool,
    #[serde(rename = "LastSeen")]
    last_seen: String,
    #[serde(rename = "LastModified")]
    last_modified: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses_with_defaults_for_the_rest() {
        let devices = Device::parse_list(
            r#"[{"device_id":"EASDEV1","uem_id":1,"user":"alice@test.local","platform":"iOS","model":"iPhone","os_version":"17.1","enrollment":"enrolled","compromised":false,"compliance":"compliant","managed_email_client":true},
                {"device_id":"EASDEV2","user":"bob@test.local","platform":"Android","model":"Pixel 8","enrollment":"enterprise_wiped","compliance":"noncompliant","last_seen":"2025-01-02T03:04:05Z"}]"#,
        )
        .unwrap();
        assert_eq!(devices.len(), 2);
        let alice = &devices[0];
        assert_eq!(
            (alice.uem_id, alice.encrypted, alice.activesync_profile),
            (1, true, true)
        );
        let bob = &devices[1];
        assert_eq!(bob.uem_id, 2, "the next free id");
        assert_eq!(bob.enrollment, Enrollment::EnterpriseWiped);
        assert_eq!(bob.compliance, Compliance::Noncompliant);
        assert_eq!(bob.last_seen.to_string(), "2025-01-02T03:04:05.000000Z");
        assert!(bob.managed_email_client);
    }

    #[test]
    fn bad_device_files_are_refused_with_the_reason() {
        let unknown_field = Device::parse_list(r#"[{"device_id":"D","user":"u","colour":"red"}]"#);
        assert!(matches!(unknown_field, Err(Error::DevicesFile(_))));
        let bad_state = Device::parse_list(r#"[{"device_id":"D","user":"u","enrollment":"gone"}]"#);
        assert!(matches!(bad_state, Err(Error::DevicesFile(_))));
        let not_array = Device::parse_list(r#"{"device_id":"D","user":"u"}"#);
        assert!(matches!(not_array, Err(Error::DevicesFile(_))));
        let twice =
            Device::parse_list(r#"[{"device_id":"D","user":"u"},{"device_id":"D","user":"v"}]"#)
                .unwrap_err();
        assert_eq!(
            twice.to_string(),
            "invalid device: device D is listed twice"
        );
        let bad_time =
            Device::parse_list(r#"[{"device_id":"D","user":"u","last_seen":"yesterday"}]"#);
        assert!(matches!(bad_time, Err(Error::InvalidDevice(_))));
    }

    #[test]
    fn the_record_uses_the_reference_names_and_derives_mem_status() {
        let mut device = Device::new("EASDEV1", 7, "alice@test.local");
        device.last_seen = Timestamp::from_unix_micros(0);
        device.modified = Timestamp::from_unix_micros(1);
        let record = serde_json::to_value(device.record()).unwrap();
        assert_eq!(
            record,
            serde_json::json!({
                "MEMDeviceID": 7, "EASDeviceID": "EASDEV1", "EmailAddress": "alice@test.local",
                "FriendlyName": "alice iPhone iOS 17.1", "Status": "Allowed", "Reason": "Compliant",
                "Managed": "TRUE", "EasDeviceType": "iPhone", "Platform": "iOS",
                "DeviceId": 7, "UserName": "alice", "UserPrincipalName": "alice@test.local",
                "Model": "iPhone", "OperatingSystem": "17.1", "EnrollmentStatus": "Enrolled",
                "ComplianceStatus": "Compliant", "CompromisedStatus": false,
                "ManagedEmailClient": true, "IsEncrypted": true, "ActiveSyncProfileInstalled": true,
                "LastSeen": "1970-01-01T00:00:00.000000Z", "LastModified": "1970-01-01T00:00:00.000001Z"
            })
        );
        device.enrollment = Enrollment::EnterpriseWiped;
        let record = serde_json::to_value(device.record()).unwrap();
        assert_eq!(record["Managed"], "FALSE");
        assert_eq!(record["Platform"], serde_json::Value::Null);
        assert_eq!(record["Status"], "Blocked");
        assert_eq!(record["Reason"], "Enterprise Wiped");
    }

    #[test]
    fn generated_devices_are_deterministic_and_varied() {
        let devices = generate(1_000);
        assert_eq!(devices.len(), 1_000);
        assert_eq!(devices[999].device_id, "EASDEV001000");
        assert_eq!(devices[1].eas_device_type(), "Android");
        let noncompliant = devices
            .iter()
            .filter(|d| d.compliance == Compliance::Noncompliant)
            .count();
        assert_eq!(noncompliant, 100);
    }
}
