//! Sharing the view between gateway nodes: the hook a shared store (Redis, in
//! `compliance-redis`) plugs into.
//!
//! Every node keeps its own [`Compliance`](crate::state::Compliance) for lookups. A change made
//! on this node (a change event, an administrator's override, a sync run by the leader) is
//! applied here at once and then handed, as an [`Update`], to the [`Replicator`] the state was
//! given with [`Compliance::replicate_to`](crate::state::Compliance::replicate_to); the
//! replicator writes it to the shared store, from which the other nodes read it and apply it
//! with [`Compliance::apply_replicated`](crate::state::Compliance::apply_replicated), which
//! never hands it back to a replicator: a change read from the store is not published again.
//!
//! Updates are handed over in the order this node applied them, under the state's writer lock,
//! so [`Replicator::publish`] must not block: queue the update and write it elsewhere.
//! Loading a saved snapshot is not published (it is this node's own fallback, not news).
//!
//! ```
//! use compliance_policy::policy::{Override, PolicySettings};
//! use compliance_policy::replicate::{Replicator, Update};
//! use compliance_policy::state::{ChangeSource, Compliance};
//! use std::sync::{Arc, Mutex};
//!
//! #[derive(Debug, Default)]
//! struct Recorded(Mutex<Vec<(Update, ChangeSource)>>);
//!
//! impl Replicator for Recorded {
//!     fn publish(&self, update: Update, source: ChangeSource) {
//!         self.0.lock().unwrap().push((update, source));
//!     }
//! }
//!
//! let recorded = Arc::new(Recorded::default());
//! let here = Compliance::new(PolicySettings::default());
//! here.replicate_to(recorded.clone()).unwrap();
//! here.set_device_override("LAB1", Some(Override::Allow));
//!
//! // What the store would carry reaches another node, which does not publish it again.
//! let there = Compliance::new(PolicySettings::default());
//! let (update, source) = recorded.0.lock().unwrap().pop().unwrap();
//! assert_eq!(source, ChangeSource::Override);
//! there.apply_replicated(update, source);
//! assert!(there.decide(Some("LAB1"), None).is_allowed());
//! ```

use crate::device::DeviceId;
use crate::policy::Override;
use crate::view::{Change, View};
use std::fmt;
use std::sync::Arc;

/// One change of the view, as a shared store carries it between nodes.
#[derive(Clone, Debug)]
pub enum Update {
    /// Changes to some devices (a delta sync or a change event).
    Changes(Vec<Change>),
    /// Every device replaced (a full sync): the new view. Published with its devices and the
    /// overrides it kept; applied from a store it replaces the whole view, overrides included
    /// (the store holds them too).
    Full(Arc<View>),
    /// A device's override set (`Some`) or cleared (`None`).
    DeviceOverride {
        /// The device.
        device_id: DeviceId,
        /// The override.
        action: Option<Override>,
    },
    /// A user's override set (`Some`) or cleared (`None`).
    UserOverride {
        /// The user's UPN, lower-case.
        user: String,
        /// The override.
        action: Option<Override>,
    },
}

/// Where a node's own changes go to reach the other nodes; see the [module docs](self).
pub trait Replicator: Send + Sync + fmt::Debug + 'static {
    /// Takes a change this node just applied. Called under the state's writer lock, in the
    /// order of the changes: must not block or fail (queue it; a store that is down is the
    /// replicator's to retry).
    fn publish(&self, update: Update, source: crate::state::ChangeSource);
}

/// A replicator is already set on this state.
#[derive(Debug, thiserror::Error)]
#[error("the compliance state already has a replicator")]
pub struct AlreadyReplicated;
