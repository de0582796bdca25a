//! Policies, overrides and the decision they make for a device.
//!
//! The families a SEG administrator knows from the console's MEM settings:
//! - general: managed devices only, allowed/blocked mail clients, users and EAS device types;
//! - managed-device: compromised, encryption, inactivity, platform and model, OS version per
//!   platform, ActiveSync profile required, compliance status;
//! - per-device and per-user admin overrides (the console's Whitelist / Blacklist / Default),
//!   which win over every policy;
//! - the default for a device the console does not know: block (fail closed), or allow (fail
//!   open, logged as such at start);
//! - ActiveSync's protocol discovery (an `OPTIONS` naming no device, MS-ASHTTP 2.2.3): passed by
//!   default, for the user's overrides and lists to decide, since every EAS client asks it
//!   before it can name its device (see [`ActiveSyncDiscovery`]).
//!
//! A wiped or unenrolled device is always blocked unless an administrator allows it explicitly:
//! that is the mission of the gateway, not a policy to turn off.
//!
//! ```
//! use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
//! use compliance_policy::policy::{BlockReason, Decision, Overrides, PolicySettings};
//!
//! let policy = PolicySettings::default();
//! let mut phone = DeviceRecord {
//!     device_id: DeviceId::new("EASDEV1"),
//!     enrollment: Enrollment::Enrolled,
//!     compliance: ComplianceStatus::Compliant,
//!     managed: true,
//!     ..Default::default()
//! };
//! let overrides = Overrides::default();
//! assert!(policy.decide(Some(&phone), None, &overrides, 0).is_allowed());
//! phone.enrollment = Enrollment::EnterpriseWiped;
//! assert_eq!(
//!     policy.decide(Some(&phone), None, &overrides, 0),
//!     Decision::Block(BlockReason::EnterpriseWiped)
//! );
//! ```

use crate::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// What the gateway does with a device the console does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownDevice {
    /// Refuse it (fail closed). The default.
    #[default]
    Block,
    /// Let it through (fail open). Logged as such at start.
    Allow,
}

/// What the gateway does with an ActiveSync `OPTIONS` that names no device.
///
/// Every Exchange ActiveSync client asks `OPTIONS /Microsoft-Server-ActiveSync`, without a
/// query, to learn which protocol versions and commands the server supports (MS-ASHTTP 2.2.3
/// and 3.2.5.2) before its first command, and again now and then. The request names no
/// device, so deciding it as an unknown device refuses every client's account set-up. Its
/// answer holds headers only (`MS-ASProtocolVersions`, `MS-ASProtocolCommands`), no mailbox
/// data, and Exchange still authenticates it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActiveSyncDiscovery {
    /// Let it through unless the user is blocked (an override, or the user lists): the
    /// default. Counted as [`AllowReason::ProtocolDiscovery`].
    #[default]
    Allow,
    /// Decide it as any request: without a device id it is an unknown device.
    Decide,
}

/// The policy settings (`[compliance.policy]`). Empty lists mean "no restriction".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// Only devices managed by the console may connect.
    pub managed_devices_only: bool,
    /// Block devices the console marks non-compliant.
    pub require_compliant: bool,
    /// Block jailbroken or rooted devices.
    pub block_compromised: bool,
    /// Block devices whose storage is not encrypted (unknown counts as not encrypted).
    pub require_encryption: bool,
    /// Block devices without an ActiveSync profile (unknown counts as none).
    pub require_activesync_profile: bool,
    /// Block devices not seen by the console for more than this many days; 0 turns it off.
    pub inactivity_days: u32,
    /// Mail clients allowed; empty allows any.
    pub allowed_mail_clients: Vec<String>,
    /// Mail clients blocked.
    pub blocked_mail_clients: Vec<String>,
    /// Users (UPN) allowed; empty allows any.
    pub allowed_users: Vec<String>,
    /// Users (UPN) blocked.
    pub blocked_users: Vec<String>,
    /// EAS device types allowed; empty allows any.
    pub allowed_device_types: Vec<String>,
    /// EAS device types blocked.
    pub blocked_device_types: Vec<String>,
    /// Platforms allowed; empty allows any.
    pub allowed_platforms: Vec<String>,
    /// Models blocked.
    pub blocked_models: Vec<String>,
    /// Minimum OS version per platform, e.g. `{ iOS = "16.0" }`.
    pub min_os_version: BTreeMap<String, String>,
    /// What happens to a device the console does not know. Configured as
    /// `compliance.unknown_device`, beside the policies rather than among them.
    #[serde(skip)]
    pub unknown_device: UnknownDevice,
    /// What happens to an ActiveSync `OPTIONS` that names no device. Configured as
    /// `compliance.activesync_discovery`, beside `unknown_device`.
    #[serde(skip)]
    pub activesync_discovery: ActiveSyncDiscovery,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            managed_devices_only: true,
            require_compliant: true,
            block_compromised: true,
            require_encryption: false,
            require_activesync_profile: false,
            inactivity_days: 0,
            allowed_mail_clients: Vec::new(),
            blocked_mail_clients: Vec::new(),
            allowed_users: Vec::new(),
            blocked_users: Vec::new(),
            allowed_device_types: Vec::new(),
            blocked_device_types: Vec::new(),
            allowed_platforms: Vec::new(),
            blocked_models: Vec::new(),
            min_os_version: BTreeMap::new(),
            unknown_device: UnknownDevice::Block,
            activesync_discovery: ActiveSyncDiscovery::Allow,
        }
    }
}

/// An administrator's explicit decision for a device or a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Override {
    /// Whitelist: allowed whatever the policies say.
    Allow,
    /// Blacklist: blocked whatever the policies say.
    Block,
}

/// Every explicit override, by device and by user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Overrides {
    /// By EAS device id.
    pub devices: HashMap<DeviceId, Override>,
    /// By user UPN, lower-cased.
    pub users: HashMap<String, Override>,
}

impl Overrides {
    /// The override for a user, if any (UPNs compare without case).
    pub fn for_user(&self, user: &str) -> Option<Override> {
        if self.users.is_empty() {
            return None;
        }
        if let Some(found) = self.users.get(user) {
            return Some(*found);
        }
        if !user.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        // Keys are lower-cased: look up a lower-cased copy, on the stack when it fits.
        let mut buffer = [0u8; 128];
        match buffer.get_mut(..user.len()) {
            Some(lower) => {
                lower.copy_from_slice(user.as_bytes());
                lower.make_ascii_lowercase();
                let lower = std::str::from_utf8(lower).ok()?;
                self.users.get(lower).copied()
            }
            None => self.users.get(&user.to_ascii_lowercase()).copied(),
        }
    }
}

/// Why a device is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllowReason {
    /// Every policy passes.
    Compliant,
    /// An administrator allowed this device.
    DeviceOverride,
    /// An administrator allowed this user.
    UserOverride,
    /// Unknown to the console, and the default is to allow.
    UnknownDeviceAllowed,
    /// An ActiveSync `OPTIONS` naming no device, passed by [`ActiveSyncDiscovery::Allow`].
    ProtocolDiscovery,
}

/// Why a device is blocked; stable, machine-readable codes (sent in `X-Compliance-Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockReason {
    /// An administrator blocked this device.
    DeviceOverride,
    /// An administrator blocked this user.
    UserOverride,
    /// Enterprise wipe.
    EnterpriseWiped,
    /// Device wipe (factory reset).
    DeviceWiped,
    /// No longer managed by the console.
    Unenrolled,
    /// Unknown to the console (and the default is to block).
    UnknownDevice,
    /// Not managed, and only managed devices may connect.
    Unmanaged,
    /// The console says non-compliant (or has not decided yet).
    NonCompliant,
    /// Jailbroken or rooted.
    Compromised,
    /// Storage not encrypted.
    NotEncrypted,
    /// No ActiveSync profile.
    NoActiveSyncProfile,
    /// Not seen by the console for too long.
    Inactive,
    /// Mail client not allowed.
    MailClient,
    /// User not allowed.
    User,
    /// EAS device type not allowed.
    DeviceType,
    /// Platform not allowed.
    Platform,
    /// Model blocked.
    Model,
    /// OS version below the minimum for its platform.
    OsVersion,
}

impl BlockReason {
    /// Every reason, each at its [`index`](Self::index). A new reason is added here too (its
    /// decisions are otherwise not counted in the metrics).
    pub const ALL: [BlockReason; 18] = [
        BlockReason::DeviceOverride,
        BlockReason::UserOverride,
        BlockReason::EnterpriseWiped,
        BlockReason::DeviceWiped,
        BlockReason::Unenrolled,
        BlockReason::UnknownDevice,
        BlockReason::Unmanaged,
        BlockReason::NonCompliant,
        BlockReason::Compromised,
        BlockReason::NotEncrypted,
        BlockReason::NoActiveSyncProfile,
        BlockReason::Inactive,
        BlockReason::MailClient,
        BlockReason::User,
        BlockReason::DeviceType,
        BlockReason::Platform,
        BlockReason::Model,
        BlockReason::OsVersion,
    ];

    /// This reason's position in [`ALL`](Self::ALL), for tables indexed by reason (the
    /// per-reason metrics).
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The stable code, e.g. `enterprise-wiped`.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::DeviceOverride => "device-override",
            BlockReason::UserOverride => "user-override",
            BlockReason::EnterpriseWiped => "enterprise-wiped",
            BlockReason::DeviceWiped => "device-wiped",
            BlockReason::Unenrolled => "unenrolled",
            BlockReason::UnknownDevice => "unknown-device",
            BlockReason::Unmanaged => "unmanaged",
            BlockReason::NonCompliant => "noncompliant",
            BlockReason::Compromised => "compromised",
            BlockReason::NotEncrypted => "not-encrypted",
            BlockReason::NoActiveSyncProfile => "no-activesync-profile",
            BlockReason::Inactive => "inactive",
            BlockReason::MailClient => "mail-client",
            BlockReason::User => "user",
            BlockReason::DeviceType => "device-type",
            BlockReason::Platform => "platform",
            BlockReason::Model => "model",
            BlockReason::OsVersion => "os-version",
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AllowReason {
    /// Every reason, each at its [`index`](Self::index). A new reason is added here too (its
    /// decisions are otherwise not counted in the metrics).
    pub const ALL: [AllowReason; 5] = [
        AllowReason::Compliant,
        AllowReason::DeviceOverride,
        AllowReason::UserOverride,
        AllowReason::UnknownDeviceAllowed,
        AllowReason::ProtocolDiscovery,
    ];

    /// This reason's position in [`ALL`](Self::ALL), for tables indexed by reason (the
    /// per-reason metrics).
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The stable code, e.g. `compliant`.
    pub fn as_str(self) -> &'static str {
        match self {
            AllowReason::Compliant => "compliant",
            AllowReason::DeviceOverride => "device-override",
            AllowReason::UserOverride => "user-override",
            AllowReason::UnknownDeviceAllowed => "unknown-device-allowed",
            AllowReason::ProtocolDiscovery => "protocol-discovery",
        }
    }
}

/// The gateway's verdict for one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Decision {
    /// Traffic passes.
    #[serde(rename = "allowed")]
    Allow(AllowReason),
    /// Traffic is refused.
    #[serde(rename = "blocked")]
    Block(BlockReason),
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// `allowed` or `blocked`.
    pub fn state(&self) -> &'static str {
        if self.is_allowed() {
            "allowed"
        } else {
            "blocked"
        }
    }

    /// The reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Allow(reason) => reason.as_str(),
            Decision::Block(reason) => reason.as_str(),
        }
    }
}

impl PolicySettings {
    /// The decision for a device (`None`: unknown to the console) used by `user` (from the
    /// request's authentication when known, else the record's), at `now` (Unix seconds).
    /// The device override is looked up by the record's id.
    ///
    /// Order: device override, user override, wipe and unenrollment, unknown device, then the
    /// policies in the order the struct lists them; the first that blocks gives the reason.
    pub fn decide(
        &self,
        device: Option<&DeviceRecord>,
        user: Option<&str>,
        overrides: &Overrides,
        now: u64,
    ) -> Decision {
        self.decide_for(
            device.map(|d| d.device_id.as_str()),
            device,
            user,
            overrides,
            now,
        )
    }

    /// [`PolicySettings::decide`] for a request naming `device_id` (upper-case), whose record
    /// may be missing: an override on a device the console does not know still applies.
    pub fn decide_for(
        &self,
        device_id: Option<&str>,
        device: Option<&DeviceRecord>,
        user: Option<&str>,
        overrides: &Overrides,
        now: u64,
    ) -> Decision {
        self.decide_request(device_id, device, user, None, overrides, now)
    }

    /// [`PolicySettings::decide_for`] for a request that also says its EAS device type
    /// (ActiveSync's `DeviceType` parameter). The device-type lists then apply to it as well as
    /// to the console's: both must pass; when the console knows no type, the request's decides.
    pub fn decide_request(
        &self,
        device_id: Option<&str>,
        device: Option<&DeviceRecord>,
        user: Option<&str>,
        device_type: Option<&str>,
        overrides: &Overrides,
        now: u64,
    ) -> Decision {
        let known = device.map(|record| (self.record_verdict(record), record.last_seen));
        let asked = Asked {
            user,
            device_type,
            discovery: false,
        };
        self.decide_from(
            device_id,
            known,
            asked,
            || device.and_then(|d| d.user.as_deref()),
            overrides,
            now,
        )
    }

    /// The decision for an ActiveSync `OPTIONS` that names no device, by `user` (when the
    /// authentication or the query names one): see [`ActiveSyncDiscovery`]. With `Allow`, the
    /// user override decides first, then the user lists (a non-empty allow list refuses a
    /// request that names no user); with `Decide`, an unknown device's decision.
    pub fn decide_discovery(&self, user: Option<&str>, overrides: &Overrides) -> Decision {
        let asked = Asked {
            user,
            device_type: None,
            discovery: true,
        };
        self.decide_from(None, None, asked, || None, overrides, 0)
    }

    /// What this policy decides from a device's record alone: every check but the ones that
    /// depend on the time (inactivity), on the request's user, or on the overrides. Computed
    /// once per record when a view is built, so that a decision reads no string of the record.
    pub(crate) fn record_verdict(&self, record: &DeviceRecord) -> RecordVerdict {
        RecordVerdict {
            before_inactivity: self.checks_before_inactivity(record),
            mail_client: (!passes_lists(
                record.mail_client.as_deref(),
                &self.allowed_mail_clients,
                &self.blocked_mail_clients,
            ))
            .then_some(BlockReason::MailClient),
            record_user_passes: passes_lists(
                record.user.as_deref(),
                &self.allowed_users,
                &self.blocked_users,
            ),
            record_type_passes: record.eas_device_type.as_deref().map(|device_type| {
                passes_lists(
                    Some(device_type),
                    &self.allowed_device_types,
                    &self.blocked_device_types,
                )
            }),
            after_user: self.checks_after_user(record),
        }
    }

    /// The decision from a record's [`RecordVerdict`] and `last_seen` (`known`; `None`: the
    /// console does not know the device). `record_user` gives the record's user, and is called
    /// only when the request names none and a user override might apply.
    ///
    /// Order: device override, user override, wipe and unenrollment, unknown device, then the
    /// policies in the order the struct lists them; the first that blocks gives the reason.
    pub(crate) fn decide_from<'a>(
        &self,
        device_id: Option<&str>,
        known: Option<(RecordVerdict, Option<u64>)>,
        asked: Asked<'_>,
        record_user: impl FnOnce() -> Option<&'a str>,
        overrides: &Overrides,
        now: u64,
    ) -> Decision {
        if let Some(id) = device_id.filter(|_| !overrides.devices.is_empty()) {
            match overrides.devices.get(id) {
                Some(Override::Allow) => return Decision::Allow(AllowReason::DeviceOverride),
                Some(Override::Block) => return Decision::Block(BlockReason::DeviceOverride),
                None => {}
            }
        }
        let user = asked.user;
        if !overrides.users.is_empty() {
            let user = match user {
                Some(user) => Some(user),
                None if known.is_some() => record_user(),
                None => None,
            };
            match user.and_then(|user| overrides.for_user(user)) {
                Some(Override::Allow) => return Decision::Allow(AllowReason::UserOverride),
                Some(Override::Block) => return Decision::Block(BlockReason::UserOverride),
                None => {}
            }
        }
        let Some((verdict, last_seen)) = known else {
            if asked.discovery && self.activesync_discovery == ActiveSyncDiscovery::Allow {
                return if passes_lists(user, &self.allowed_users, &self.blocked_users) {
                    Decision::Allow(AllowReason::ProtocolDiscovery)
                } else {
                    Decision::Block(BlockReason::User)
                };
            }
            return match self.unknown_device {
                UnknownDevice::Block => Decision::Block(BlockReason::UnknownDevice),
                UnknownDevice::Allow => Decision::Allow(AllowReason::UnknownDeviceAllowed),
            };
        };
        if let Some(reason) = verdict.before_inactivity {
            return Decision::Block(reason);
        }
        if self.inactivity_days > 0 {
            let limit = u64::from(self.inactivity_days) * 86_400;
            match last_seen {
                Some(seen) if now.saturating_sub(seen) <= limit => {}
                _ => return Decision::Block(BlockReason::Inactive),
            }
        }
        if let Some(reason) = verdict.mail_client {
            return Decision::Block(reason);
        }
        let user_passes = match user {
            Some(user) => passes_lists(Some(user), &self.allowed_users, &self.blocked_users),
            None => verdict.record_user_passes,
        };
        if !user_passes {
            return Decision::Block(BlockReason::User);
        }
        let asked_type_passes = asked.device_type.map(|device_type| {
            passes_lists(
                Some(device_type),
                &self.allowed_device_types,
                &self.blocked_device_types,
            )
        });
        let type_passes = match (verdict.record_type_passes, asked_type_passes) {
            (Some(record), Some(asked)) => record && asked,
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => {
                passes_lists(None, &self.allowed_device_types, &self.blocked_device_types)
            }
        };
        if !type_passes {
            return Decision::Block(BlockReason::DeviceType);
        }
        match verdict.after_user {
            Some(reason) => Decision::Block(reason),
            None => Decision::Allow(AllowReason::Compliant),
        }
    }

    /// Wipe, unenrollment, and the checks of the record's flags, in the order of
    /// [`PolicySettings::decide`].
    fn checks_before_inactivity(&self, record: &DeviceRecord) -> Option<BlockReason> {
        match record.enrollment {
            Enrollment::EnterpriseWiped => return Some(BlockReason::EnterpriseWiped),
            Enrollment::DeviceWiped => return Some(BlockReason::DeviceWiped),
            Enrollment::Unenrolled => return Some(BlockReason::Unenrolled),
            Enrollment::Enrolled | Enrollment::Unknown => {}
        }
        if self.managed_devices_only
            && (!record.managed || record.enrollment != Enrollment::Enrolled)
        {
            return Some(BlockReason::Unmanaged);
        }
        if self.require_compliant && record.compliance != ComplianceStatus::Compliant {
            return Some(BlockReason::NonCompliant);
        }
        if self.block_compromised && record.compromised {
            return Some(BlockReason::Compromised);
        }
        if self.require_encryption && record.encrypted != Some(true) {
            return Some(BlockReason::NotEncrypted);
        }
        if self.require_activesync_profile && record.activesync_profile != Some(true) {
            return Some(BlockReason::NoActiveSyncProfile);
        }
        None
    }

    /// The checks that follow the user's and the device type's: platform, model, OS version.
    fn checks_after_user(&self, record: &DeviceRecord) -> Option<BlockReason> {
        if !passes_lists(record.platform.as_deref(), &self.allowed_platforms, &[]) {
            return Some(BlockReason::Platform);
        }
        if !passes_lists(record.model.as_deref(), &[], &self.blocked_models) {
            return Some(BlockReason::Model);
        }
        if let Some(platform) = record.platform.as_deref() {
            let minimum = self
                .min_os_version
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(platform))
                .map(|(_, version)| version);
            if let Some(minimum) = minimum {
                let ok = record
                    .os_version
                    .as_deref()
                    .is_some_and(|v| version_at_least(v, minimum));
                if !ok {
                    return Some(BlockReason::OsVersion);
                }
            }
        }
        None
    }
}

/// What a policy decides from a device's record alone (see [`PolicySettings::record_verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordVerdict {
    /// Wipe, unenrollment, managed, compliant, compromised, encryption, ActiveSync profile.
    pub(crate) before_inactivity: Option<BlockReason>,
    /// The mail client lists.
    pub(crate) mail_client: Option<BlockReason>,
    /// The record's own user passes the user lists (used when the request names no user).
    pub(crate) record_user_passes: bool,
    /// The record's EAS device type passes the device-type lists (`None`: it has none).
    pub(crate) record_type_passes: Option<bool>,
    /// Platform, model, OS version.
    pub(crate) after_user: Option<BlockReason>,
}

/// What a request says of itself beyond its device id.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Asked<'a> {
    /// The user its authentication names.
    pub(crate) user: Option<&'a str>,
    /// Its EAS device type (ActiveSync's `DeviceType` parameter).
    pub(crate) device_type: Option<&'a str>,
    /// An ActiveSync `OPTIONS` naming no device ([`ActiveSyncDiscovery`]).
    pub(crate) discovery: bool,
}

/// An allow list (empty: anything) and a block list, compared without ASCII case. A missing value
/// passes the block list but not a non-empty allow list.
fn passes_lists(value: Option<&str>, allowed: &[String], blocked: &[String]) -> bool {
    match value {
        Some(value) => {
            let listed =
                |list: &[String]| list.iter().any(|entry| entry.eq_ignore_ascii_case(value));
            (allowed.is_empty() || listed(allowed)) && !listed(blocked)
        }
        None => allowed.is_empty(),
    }
}

/// Dotted numeric versions, compared part by part (`17.1` ≥ `17.0.3`); a part that is not a
/// number ends the comparison there, counting as 0.
fn version_at_least(version: &str, minimum: &str) -> bool {
    // Part by part, a missing part counting as 0, without collecting: this runs per request.
    let (mut have, mut need) = (numeric_parts(version), numeric_parts(minimum));
    loop {
        match (have.next(), need.next()) {
            (None, None) => return true,
            (have, need) => {
                let (have, need) = (have.unwrap_or(0), need.unwrap_or(0));
                if have != need {
                    return have > need;
                }
            }
        }
    }
}

/// The leading numeric parts of a dotted version.
fn numeric_parts(version: &str) -> impl Iterator<Item = u64> + '_ {
    version
        .split('.')
        .map_while(|part| part.trim().parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compliant() -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::new("EASDEV1"),
            user: Some("alice@test.local".into()),
            platform: Some("iOS".into()),
            os_version: Some("17.1".into()),
            enrollment: Enrollment::Enrolled,
            compliance: ComplianceStatus::Compliant,
            managed: true,
            managed_email_client: true,
            ..Default::default()
        }
    }

    fn decide(policy: &PolicySettings, record: &DeviceRecord) -> Decision {
        policy.decide(Some(record), None, &Overrides::default(), 1_000_000)
    }

    #[test]
    fn activesync_discovery_passes_for_the_user_lists_and_overrides_to_decide() {
        let mut policy = PolicySettings::default();
        let mut overrides = Overrides::default();
        let allowed = Decision::Allow(AllowReason::ProtocolDiscovery);
        assert_eq!(
            policy.decide_discovery(Some("alice@x"), &overrides),
            allowed
        );
        assert_eq!(policy.decide_discovery(None, &overrides), allowed);
        overrides.users.insert("bob@x".into(), Override::Block);
        overrides.users.insert("carol@x".into(), Override::Allow);
        assert_eq!(
            policy.decide_discovery(Some("BOB@x"), &overrides),
            Decision::Block(BlockReason::UserOverride)
        );
        policy.blocked_users = vec!["dave@x".into()];
        assert_eq!(
            policy.decide_discovery(Some("dave@x"), &overrides),
            Decision::Block(BlockReason::User)
        );
        // An allow list refuses a request that names nobody; an override still wins over it.
        policy.allowed_users = vec!["alice@x".into()];
        assert_eq!(
            policy.decide_discovery(None, &overrides),
            Decision::Block(BlockReason::User)
        );
        assert_eq!(
            policy.decide_discovery(Some("alice@x"), &overrides),
            allowed
        );
        assert_eq!(
            policy.decide_discovery(Some("carol@x"), &overrides),
            Decision::Allow(AllowReason::UserOverride)
        );
        // Decide: an unknown device, as either default for unknown devices says.
        policy.activesync_discovery = ActiveSyncDiscovery::Decide;
        assert_eq!(
            policy.decide_discovery(Some("alice@x"), &overrides),
            Decision::Block(BlockReason::UnknownDevice)
        );
        policy.unknown_device = UnknownDevice::Allow;
        assert_eq!(
            policy.decide_discovery(Some("alice@x"), &overrides),
            Decision::Allow(AllowReason::UnknownDeviceAllowed)
        );
    }

    #[test]
    fn compliant_managed_device_is_allowed() {
        assert_eq!(
            decide(&PolicySettings::default(), &compliant()),
            Decision::Allow(AllowReason::Compliant)
        );
    }

    #[test]
    fn wipe_and_unenrollment_block_with_their_reason() {
        let policy = PolicySettings::default();
        for (state, reason) in [
            (Enrollment::EnterpriseWiped, BlockReason::EnterpriseWiped),
            (Enrollment::DeviceWiped, BlockReason::DeviceWiped),
            (Enrollment::Unenrolled, BlockReason::Unenrolled),
        ] {
            let record = DeviceRecord {
                enrollment: state,
                ..compliant()
            };
            assert_eq!(decide(&policy, &record), Decision::Block(reason));
        }
    }

    #[test]
    fn wipe_blocks_even_with_every_policy_off() {
        let policy = PolicySettings {
            managed_devices_only: false,
            require_compliant: false,
            block_compromised: false,
            ..Default::default()
        };
        let record = DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..compliant()
        };
        assert_eq!(
            decide(&policy, &record),
            Decision::Block(BlockReason::EnterpriseWiped)
        );
    }

    #[test]
    fn device_override_wins_over_everything_then_user_override() {
        let policy = PolicySettings::default();
        let wiped = DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..compliant()
        };
        let mut overrides = Overrides::default();
        overrides
            .devices
            .insert(DeviceId::new("easdev1"), Override::Allow);
        overrides
            .users
            .insert("alice@test.local".into(), Override::Block);
        assert_eq!(
            policy.decide(Some(&wiped), None, &overrides, 0),
            Decision::Allow(AllowReason::DeviceOverride)
        );
        overrides.devices.clear();
        assert_eq!(
            policy.decide(Some(&compliant()), None, &overrides, 0),
            Decision::Block(BlockReason::UserOverride)
        );
        assert_eq!(
            policy.decide(Some(&compliant()), Some("ALICE@test.local"), &overrides, 0),
            Decision::Block(BlockReason::UserOverride)
        );
    }

    #[test]
    fn override_applies_to_a_device_the_console_does_not_know() {
        let mut overrides = Overrides::default();
        overrides
            .devices
            .insert(DeviceId::new("LAB1"), Override::Allow);
        let policy = PolicySettings::default();
        assert_eq!(
            policy.decide_for(Some("LAB1"), None, None, &overrides, 0),
            Decision::Allow(AllowReason::DeviceOverride)
        );
        assert_eq!(
            policy.decide_for(Some("OTHER"), None, None, &overrides, 0),
            Decision::Block(BlockReason::UnknownDevice)
        );
    }

    #[test]
    fn unknown_device_follows_the_default() {
        let overrides = Overrides::default();
        let block = PolicySettings::default();
        assert_eq!(
            block.decide(None, None, &overrides, 0),
            Decision::Block(BlockReason::UnknownDevice)
        );
        let allow = PolicySettings {
            unknown_device: UnknownDevice::Allow,
            ..Default::default()
        };
        assert_eq!(
            allow.decide(None, None, &overrides, 0),
            Decision::Allow(AllowReason::UnknownDeviceAllowed)
        );
    }

    #[test]
    fn each_policy_blocks_with_its_own_reason() {
        let cases: Vec<(PolicySettings, DeviceRecord, BlockReason)> = vec![
            (
                PolicySettings::default(),
                DeviceRecord {
                    managed: false,
                    ..compliant()
                },
                BlockReason::Unmanaged,
            ),
            (
                PolicySettings::default(),
                DeviceRecord {
                    compliance: ComplianceStatus::NonCompliant,
                    ..compliant()
                },
                BlockReason::NonCompliant,
            ),
            (
                PolicySettings::default(),
                DeviceRecord {
                    compromised: true,
                    ..compliant()
                },
                BlockReason::Compromised,
            ),
            (
                PolicySettings {
                    require_encryption: true,
                    ..Default::default()
                },
                compliant(),
                BlockReason::NotEncrypted,
            ),
            (
                PolicySettings {
                    require_activesync_profile: true,
                    ..Default::default()
                },
                DeviceRecord {
                    activesync_profile: Some(false),
                    ..compliant()
                },
                BlockReason::NoActiveSyncProfile,
            ),
            (
                PolicySettings {
                    inactivity_days: 1,
                    ..Default::default()
                },
                DeviceRecord {
                    last_seen: Some(1_000_000 - 2 * 86_400),
                    ..compliant()
                },
                BlockReason::Inactive,
            ),
            (
                PolicySettings {
                    allowed_mail_clients: vec!["Boxer".into()],
                    ..Default::default()
                },
                DeviceRecord {
                    mail_client: Some("Outlook".into()),
                    ..compliant()
                },
                BlockReason::MailClient,
            ),
            (
                PolicySettings {
                    blocked_users: vec!["ALICE@test.local".into()],
                    ..Default::default()
                },
                compliant(),
                BlockReason::User,
            ),
            (
                PolicySettings {
                    blocked_device_types: vec!["iphone".into()],
                    ..Default::default()
                },
                DeviceRecord {
                    eas_device_type: Some("iPhone".into()),
                    ..compliant()
                },
                BlockReason::DeviceType,
            ),
            (
                PolicySettings {
                    allowed_platforms: vec!["Android".into()],
                    ..Default::default()
                },
                compliant(),
                BlockReason::Platform,
            ),
            (
                PolicySettings {
                    blocked_models: vec!["iPhone8,1".into()],
                    ..Default::default()
                },
                DeviceRecord {
                    model: Some("iPhone8,1".into()),
                    ..compliant()
                },
                BlockReason::Model,
            ),
            (
                PolicySettings {
                    min_os_version: [("ios".into(), "17.2".into())].into(),
                    ..Default::default()
                },
                compliant(),
                BlockReason::OsVersion,
            ),
        ];
        for (policy, record, reason) in cases {
            assert_eq!(
                decide(&policy, &record),
                Decision::Block(reason),
                "{reason}"
            );
        }
    }

    #[test]
    fn policies_that_pass_allow() {
        let policy = PolicySettings {
            inactivity_days: 3,
            allowed_mail_clients: vec!["boxer".into()],
            min_os_version: [("iOS".into(), "17.0.3".into())].into(),
            ..Default::default()
        };
        let record = DeviceRecord {
            last_seen: Some(1_000_000 - 86_400),
            mail_client: Some("Boxer".into()),
            ..compliant()
        };
        assert!(decide(&policy, &record).is_allowed());
    }

    #[test]
    fn a_requests_device_type_is_checked_with_the_consoles() {
        let policy = PolicySettings {
            allowed_device_types: vec!["iPhone".into(), "iPad".into()],
            ..PolicySettings::default()
        };
        let overrides = Overrides::default();
        let decide = |record_type: Option<&str>, asked: Option<&str>| {
            let mut record = compliant();
            record.eas_device_type = record_type.map(Into::into);
            policy.decide_request(Some("EASDEV1"), Some(&record), None, asked, &overrides, 0)
        };
        let blocked = Decision::Block(BlockReason::DeviceType);
        assert!(decide(Some("iPhone"), Some("ipad")).is_allowed());
        assert!(decide(Some("iPhone"), None).is_allowed());
        assert!(
            decide(None, Some("iPhone")).is_allowed(),
            "the console knows no type: the request's decides"
        );
        assert_eq!(
            decide(None, None),
            blocked,
            "no type at all fails an allow list"
        );
        assert_eq!(
            decide(Some("iPhone"), Some("Android")),
            blocked,
            "both must pass"
        );
        assert_eq!(
            decide(Some("Android"), Some("iPhone")),
            blocked,
            "both must pass"
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("17.10", "17.9"));
        assert!(version_at_least("17", "17.0.0"));
        assert!(!version_at_least("16.7.2", "17"));
        assert!(!version_at_least("garbage", "1"));
    }

    #[test]
    fn decision_serialises_with_state_and_reason() {
        let json = serde_json::to_string(&Decision::Block(BlockReason::EnterpriseWiped)).unwrap();
        assert_eq!(json, r#"{"state":"blocked","reason":"enterprise-wiped"}"#);
    }

    #[test]
    fn every_reason_is_listed_at_its_index() {
        for (i, reason) in AllowReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
        for (i, reason) in BlockReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
    }
}
