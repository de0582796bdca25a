//! The per-device compliance view and the tower layer that blocks non-compliant devices.
//!
//! The heart of the gateway: ENS watches mailboxes for mobile devices, and when the management
//! console (UEM) wipes a device or finds it non-compliant, that device's EWS traffic must stop,
//! with no help from the device. This crate keeps a [`view`] of every device the console knows,
//! decides by [`policy`] whether each request may pass, and [`enforce`]s the decision as a
//! tower layer in front of the reverse proxy of [`ews_proxy_core`]. [`state::Compliance`] ties
//! them: every change goes through it, and it cuts the open streams of a device that becomes
//! blocked and announces each [`state::Transition`].
//!
//! ```
//! use compliance_policy::device::{ComplianceStatus, DeviceId, DeviceRecord, Enrollment};
//! use compliance_policy::policy::PolicySettings;
//! use compliance_policy::state::{ChangeSource, Compliance};
//! use compliance_policy::view::Change;
//!
//! let compliance = Compliance::new(PolicySettings::default());
//! let phone = DeviceRecord {
//!     device_id: DeviceId::new("EASDEV1"),
//!     user: Some("alice@test.local".into()),
//!     enrollment: Enrollment::Enrolled,
//!     compliance: ComplianceStatus::Compliant,
//!     managed: true,
//!     ..Default::default()
//! };
//! compliance.replace_all(vec![phone.clone()], ChangeSource::FullSync);
//! assert!(compliance.decide(Some("easdev1"), None).is_allowed());
//!
//! // The console wipes it: one change, one transition, and the device is blocked.
//! let wiped = DeviceRecord { enrollment: Enrollment::EnterpriseWiped, ..phone };
//! let transitions = compliance.apply(vec![Change::Upsert(wiped)], ChangeSource::ChangeEvent);
//! assert_eq!(transitions.len(), 1);
//! assert_eq!(compliance.decide(Some("EASDEV1"), None).reason(), "enterprise-wiped");
//! ```

pub mod admin;
pub mod device;
pub mod device_limit;
pub mod enforce;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod recent;
pub mod replicate;
pub mod snapshot;
pub mod state;
mod streams;
pub mod sync;
mod table;
pub mod uem;
pub mod view;

pub use ews_proxy_core;
pub use streams::StreamGuard;
