//! What the gateway knows of a device: the record the management console (UEM) keeps for it.

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// An Exchange ActiveSync device id, as UEM knows it and ENS sends it.
///
/// Compared without regard to ASCII case: EAS ids are hex or alphanumeric strings that clients
/// and consoles write in either case. Stored upper-cased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    /// The id, upper-cased.
    pub fn new(id: &str) -> Self {
        if id.bytes().any(|b| b.is_ascii_lowercase()) {
            DeviceId(id.to_ascii_uppercase().into())
        } else {
            DeviceId(id.into())
        }
    }

    /// The id as stored (upper-case).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for DeviceId {
    fn from(id: String) -> Self {
        DeviceId::new(&id)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0.to_string()
    }
}

impl Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Where a device stands with the management console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enrollment {
    /// Enrolled and managed.
    Enrolled,
    /// Removed from management (by the user or an administrator).
    Unenrolled,
    /// Company data removed by the console (enterprise wipe).
    EnterpriseWiped,
    /// Factory reset by the console.
    DeviceWiped,
    /// The console does not say.
    #[default]
    Unknown,
}

/// The console's compliance verdict for a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComplianceStatus {
    /// Meets every compliance policy of the console.
    Compliant,
    /// Fails at least one.
    NonCompliant,
    /// Being evaluated.
    Pending,
    /// The console does not say.
    #[default]
    Unknown,
}

/// One device, as the management console describes it.
///
/// The strings are shared (`Arc<str>`): a full sync of a million devices has a few distinct
/// platforms, models, OS versions, device types and mail clients, and most users' UPN is their
/// e-mail address; the sync keeps one copy of each (see [`crate::uem`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceRecord {
    /// The EAS device id ENS sends with every request.
    pub device_id: DeviceId,
    /// The console's own id for the device.
    pub uem_id: Option<u64>,
    /// The user's UPN, e.g. `alice@corp.example`.
    pub user: Option<Arc<str>>,
    /// The user's e-mail address.
    pub email: Option<Arc<str>>,
    /// `iOS`, `Android`, `WinRT`…
    pub platform: Option<Arc<str>>,
    /// Device model, e.g. `iPhone15,2`.
    pub model: Option<Arc<str>>,
    /// Operating system version, dotted numbers.
    pub os_version: Option<Arc<str>>,
    /// The EAS device type the mail client reports (`iPhone`, `Android`, `Boxer`…).
    pub eas_device_type: Option<Arc<str>>,
    /// The mail client (user agent family), e.g. `Boxer`, `Outlook`.
    pub mail_client: Option<Arc<str>>,
    /// Enrollment state.
    pub enrollment: Enrollment,
    /// Jailbroken or rooted.
    pub compromised: bool,
    /// The console's compliance verdict.
    pub compliance: ComplianceStatus,
    /// Managed by the console (MDM).
    pub managed: bool,
    /// The mail client is one the console manages.
    pub managed_email_client: bool,
    /// Storage encrypted, when the console knows.
    pub encrypted: Option<bool>,
    /// An ActiveSync profile is installed, when the console knows.
    pub activesync_profile: Option<bool>,
    /// Last contact with the console, seconds since the Unix epoch.
    pub last_seen: Option<u64>,
}

impl Default for DeviceId {
    fn default() -> Self {
        DeviceId(Arc::from(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_compare_without_case() {
        assert_eq!(DeviceId::new("abc123def"), DeviceId::new("ABC123DEF"));
        assert_eq!(DeviceId::new("abc").as_str(), "ABC");
        let json = serde_json::to_string(&DeviceId::new("x1")).unwrap();
        assert_eq!(json, "\"X1\"");
        let back: DeviceId = serde_json::from_str("\"x1\"").unwrap();
        assert_eq!(back, DeviceId::new("X1"));
    }
}
