//! What the trail records: an [`Entry`] per event, each an [`Event`] of one kind.
//!
//! Entries are stored and served as the same JSON object: `id`, `at` (RFC 3339, UTC,
//! milliseconds), `node`, `device` and `user` when the event concerns one, and the event's fields
//! with its `kind`:
//!
//! ```
//! use audit_trail::entry::{DecisionRecord, Entry, Event};
//! use std::time::{Duration, UNIX_EPOCH};
//!
//! let entry = Entry {
//!     id: 7,
//!     at: UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
//!     node: "seg-1".into(),
//!     device: Some("EASDEV1".into()),
//!     user: Some("alice@test.local".into()),
//!     event: Event::Transition {
//!         before: DecisionRecord::new("allowed", "compliant"),
//!         after: DecisionRecord::new("blocked", "enterprise-wiped"),
//!         source: "change-event".into(),
//!     },
//! };
//! let json = serde_json::to_value(&entry).unwrap();
//! assert_eq!(json["at"], "2025-11-24T16:00:00.123Z");
//! assert_eq!(json["kind"], "transition");
//! assert_eq!(json["after"]["reason"], "enterprise-wiped");
//! assert_eq!(serde_json::from_value::<Entry>(json).unwrap(), entry);
//! ```

use compliance_policy::policy::{Decision, Override};
use compliance_policy::state::{ChangeSource, Transition};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// One entry of the trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its place in the trail: ids only grow, and a later entry has a larger id.
    pub id: u64,
    /// When it happened (never before the entry with the id before it), served as RFC 3339.
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// The gateway node that recorded it.
    pub node: String,
    /// The EAS device id (upper case) the event concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The user (lower case) the event concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// What happened, by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Event {
    /// A device's decision changed.
    Transition {
        /// The decision before.
        before: DecisionRecord,
        /// The decision now.
        after: DecisionRecord,
        /// What caused it: `full-sync`, `delta-sync`, `change-event`, `override`, `snapshot`.
        source: String,
    },
    /// An administrator set an override.
    OverrideSet {
        /// Who: the admin token's name or a named operator.
        actor: String,
        /// The device or user overridden.
        target: Target,
        /// `allow` or `block`.
        action: String,
        /// Why, as the administrator wrote it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An administrator cleared an override.
    OverrideCleared {
        /// Who.
        actor: String,
        /// The device or user no longer overridden.
        target: Target,
        /// Why, as the administrator wrote it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Syncs with the console succeeded.
    SyncSucceeded {
        /// `full` or `delta`.
        sync: String,
        /// How many syncs of that kind succeeded since the previous entry of this kind.
        count: u64,
        /// Devices in the view after it.
        devices: u64,
    },
    /// Syncs with the console failed.
    SyncFailed {
        /// The last failure's cause.
        cause: String,
        /// How many syncs failed since the previous entry of this kind.
        count: u64,
    },
    /// The gateway started.
    GatewayStarted {
        /// Its version.
        version: String,
    },
    /// The gateway stopped (gracefully; a crash records nothing).
    GatewayStopped,
    /// The gateway's configuration was reloaded.
    ConfigurationReloaded {
        /// What changed, in a few words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl Event {
    /// The `kind` of the event, as serialized.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Transition { .. } => "transition",
            Event::OverrideSet { .. } => "override-set",
            Event::OverrideCleared { .. } => "override-cleared",
            Event::SyncSucceeded { .. } => "sync-succeeded",
            Event::SyncFailed { .. } => "sync-failed",
            Event::GatewayStarted { .. } => "gateway-started",
            Event::GatewayStopped => "gateway-stopped",
            Event::ConfigurationReloaded { .. } => "configuration-reloaded",
        }
    }
}

/// A decision as recorded: `{"state":"blocked","reason":"enterprise-wiped"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// `allowed` or `blocked`.
    pub state: String,
    /// The reason code.
    pub reason: String,
}

impl DecisionRecord {
    /// A decision of `state` for `reason`.
    pub fn new(state: impl Into<String>, reason: impl Into<String>) -> Self {
        DecisionRecord {
            state: state.into(),
            reason: reason.into(),
        }
    }
}

impl From<&Decision> for DecisionRecord {
    fn from(decision: &Decision) -> Self {
        DecisionRecord::new(decision.state(), decision.reason())
    }
}

/// What an override names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A device, by EAS device id.
    Device(String),
    /// A user, by UPN.
    User(String),
}

/// An event not yet written: what the producers hand to an [`AuditSink`](crate::AuditSink).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When it happened.
    pub at: SystemTime,
    /// The device it concerns.
    pub device: Option<String>,
    /// The user it concerns.
    pub user: Option<String>,
    /// What happened.
    pub event: Event,
}

impl Record {
    /// `event`, happening now, concerning no device or user yet.
    pub fn now(event: Event) -> Self {
        Record {
            at: SystemTime::now(),
            device: None,
            user: None,
            event,
        }
    }

    /// Concerning the device `id` (kept upper case, as the gateway keys devices).
    pub fn device(mut self, id: impl AsRef<str>) -> Self {
        self.device = Some(id.as_ref().to_ascii_uppercase());
        self
    }

    /// Concerning `user` (kept lower case).
    pub fn user(mut self, user: impl AsRef<str>) -> Self {
        self.user = Some(user.as_ref().to_ascii_lowercase());
        self
    }

    /// The record of a compliance [`Transition`].
    pub fn transition(transition: &Transition) -> Self {
        let record = Record::now(Event::Transition {
            before: (&transition.before).into(),
            after: (&transition.after).into(),
            source: source_name(transition.source),
        })
        .device(transition.device_id.as_str());
        match &transition.user {
            Some(user) => record.user(user),
            None => record,
        }
    }

    /// The record of an override set (`Some`) or cleared (`None`) through the admin API.
    pub fn override_change(change: &compliance_policy::admin::OverrideChange) -> Self {
        use compliance_policy::admin::OverrideTarget;
        let target = match &change.target {
            OverrideTarget::Device(id) => Target::Device(id.as_str().to_owned()),
            OverrideTarget::User(user) => Target::User(user.to_ascii_lowercase()),
        };
        let actor = change.operator.name().to_owned();
        let reason = change.reason.clone();
        let event = match change.action {
            Some(action) => Event::OverrideSet {
                actor,
                target: target.clone(),
                action: match action {
                    Override::Allow => "allow",
                    Override::Block => "block",
                }
                .to_owned(),
                reason,
            },
            None => Event::OverrideCleared {
                actor,
                target: target.clone(),
                reason,
            },
        };
        let record = Record::now(event);
        match target {
            Target::Device(id) => record.device(id),
            Target::User(user) => record.user(user),
        }
    }
}

/// The name of a change source as it serializes (`change-event`, …): new sources need no change
/// here.
fn source_name(source: ChangeSource) -> String {
    match serde_json::to_value(source) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{source:?}"),
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

/// RFC 3339 in UTC with milliseconds, both ways.
pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub(crate) fn serialize<S: Serializer>(
        at: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(*at))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SystemTime, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}
