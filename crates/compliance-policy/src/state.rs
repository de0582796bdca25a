//! The shared compliance state: the current view, the policy, and what follows a change.
//!
//! Every change (full sync, delta, change event, override) goes through [`Compliance`], which
//! swaps in a new [`View`], works out which devices changed decision, cuts the long-lived
//! streams of devices that became blocked, counts each [`Transition`] in its
//! [metrics](crate::metrics) and publishes it to subscribers (the ENS callback, the audit
//! trail). Reads ([`Compliance::decide`]) take no lock.

use crate::device::{DeviceId, DeviceRecord};
use crate::metrics::ComplianceMetrics;
use crate::policy::{Decision, Override, Overrides, PolicySettings};
use crate::recent::RecentRequests;
use crate::replicate::{AlreadyReplicated, Replicator, Update};
use crate::streams::{StreamGuard, StreamRegistry};
use crate::view::{Change, View};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};

/// What caused a change of the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeSource {
    /// A full sync from the console.
    FullSync,
    /// A delta sync from the console.
    DeltaSync,
    /// A change event pushed by the console.
    ChangeEvent,
    /// An administrator's override.
    Override,
    /// A saved snapshot loaded at start.
    Snapshot,
}

/// A device whose decision changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The device.
    pub device_id: DeviceId,
    /// Its user, when known.
    pub user: Option<String>,
    /// The decision before.
    pub before: Decision,
    /// The decision now.
    pub after: Decision,
    /// What caused it.
    pub source: ChangeSource,
}

#[derive(Debug)]
struct Shared {
    view: ArcSwap<View>,
    /// Fixed for the state's life: every view is prepared for it (see [`View::prepared`]).
    policy: Arc<PolicySettings>,
    /// Serialises writers; readers never take it.
    writer: Mutex<()>,
    streams: StreamRegistry,
    transitions: broadcast::Sender<Transition>,
    /// Bumped after every change of the view, for whoever saves it.
    version: watch::Sender<u64>,
    /// Where decisions, syncs, transitions and events are counted, if anywhere.
    metrics: Option<ComplianceMetrics>,
    /// Where this node's own changes go to reach other nodes (see [`crate::replicate`]).
    replicator: OnceLock<Arc<dyn Replicator>>,
    /// The last decisions of the enforcement layer, for diagnostics.
    recent: RecentRequests,
    /// When a change event last changed each device (written and read under `writer`): a
    /// sync whose fetch started before that must not undo the event with what it read.
    event_times: Mutex<HashMap<DeviceId, Instant>>,
}

/// The compliance state; cheap to clone, every clone shares it.
#[derive(Clone, Debug)]
pub struct Compliance {
    shared: Arc<Shared>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Compliance {
    /// An empty, not yet loaded state with `policy`.
    pub fn new(policy: PolicySettings) -> Self {
        Self::build(policy, None)
    }

    /// An empty, not yet loaded state with `policy`, counted in `metrics`: its transitions
    /// here, and its decisions, syncs, change events and ENS callbacks by whatever works on it
    /// (see [`crate::metrics`]). The metrics' view gauges read this state.
    pub fn with_metrics(policy: PolicySettings, metrics: ComplianceMetrics) -> Self {
        let compliance = Self::build(policy, Some(metrics.clone()));
        metrics.attach(&compliance);
        compliance
    }

    /// The metrics this state is counted in, if any.
    #[inline]
    pub fn metrics(&self) -> Option<&ComplianceMetrics> {
        self.shared.metrics.as_ref()
    }

    /// A handle that does not keep the state alive (for the metrics the state itself holds).
    pub(crate) fn downgrade(&self) -> WeakCompliance {
        WeakCompliance(Arc::downgrade(&self.shared))
    }

    fn build(policy: PolicySettings, metrics: Option<ComplianceMetrics>) -> Self {
        let (transitions, _) = broadcast::channel(4096);
        let (version, _) = watch::channel(0);
        Compliance {
            shared: Arc::new(Shared {
                view: ArcSwap::from_pointee(View::default()),
                policy: Arc::new(policy),
                writer: Mutex::new(()),
                streams: StreamRegistry::default(),
                transitions,
                version,
                metrics,
                replicator: OnceLock::new(),
                recent: RecentRequests::default(),
                event_times: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The decision for a request from `device_id` (none: unknown) by `user` (when the
    /// authentication names one). Lock-free; the hot path of every request.
    #[inline]
    pub fn decide(&self, device_id: Option<&str>, user: Option<&str>) -> Decision {
        self.decide_request(device_id, user, None)
    }

    /// [`Compliance::decide`] for a request that also says its EAS device type (ActiveSync's
    /// `DeviceType`): the device-type policy then applies to it too (see
    /// [`PolicySettings::decide_request`]).
    #[inline]
    pub fn decide_request(
        &self,
        device_id: Option<&str>,
        user: Option<&str>,
        device_type: Option<&str>,
    ) -> Decision {
        let view = self.shared.view.load();
        let policy = &self.shared.policy;
        let now = if policy.inactivity_days > 0 {
            now_secs()
        } else {
            0
        };
        view.decide_request(policy, device_id, user, device_type, now)
    }

    /// The decision for an ActiveSync `OPTIONS` that names no device, by `user`: passed unless
    /// the user is blocked, or decided as an unknown device, as the policy's
    /// [`ActiveSyncDiscovery`](crate::policy::ActiveSyncDiscovery) says.
    pub fn decide_discovery(&self, user: Option<&str>) -> Decision {
        self.shared
            .view
            .load()
            .decide_discovery(&self.shared.policy, user)
    }

    /// The last requests the enforcement layer decided (see [`crate::recent`]).
    pub fn recent_requests(&self) -> &RecentRequests {
        &self.shared.recent
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.shared.view.load_full()
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<PolicySettings> {
        self.shared.policy.clone()
    }

    /// Receives every transition from now on. A receiver that falls behind by more than 4096
    /// transitions misses some (and is told so by `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.shared.transitions.subscribe()
    }

    /// Changes whenever the view changes (a counter), for whoever keeps a copy of it.
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// Hands every change made on this node from now on to `replicator`, so that it reaches
    /// the other nodes sharing the view (see [`crate::replicate`]). Changes applied with
    /// [`Compliance::apply_replicated`] and snapshots loaded are not handed over.
    ///
    /// # Errors
    ///
    /// [`AlreadyReplicated`] if the state has a replicator already (it keeps that one).
    pub fn replicate_to(&self, replicator: Arc<dyn Replicator>) -> Result<(), AlreadyReplicated> {
        self.shared
            .replicator
            .set(replicator)
            .map_err(|_| AlreadyReplicated)
    }

    /// Applies a change another node made (read from the shared store), as that node's
    /// `source` made it; unlike the other changes, it is not handed to the replicator.
    pub fn apply_replicated(&self, update: Update, source: ChangeSource) -> Vec<Transition> {
        match update {
            Update::Changes(changes) => self.apply_changes(changes, source, false, None),
            Update::Full(view) => self.update(source, Scope::All, |_, _| (*view).clone(), |_| None),
            Update::DeviceOverride { device_id, action } => {
                self.device_override(device_id, action, false)
            }
            Update::UserOverride { user, action } => self.user_override(user, action, false),
        }
    }

    /// Loads a saved snapshot into a state that has no view yet (at start, before the first
    /// full sync); the view counts as loaded, so the gateway serves from it.
    pub fn load_saved(&self, saved: crate::snapshot::Saved) -> Vec<Transition> {
        let synced_at = saved
            .synced_at
            .map(|secs| UNIX_EPOCH + std::time::Duration::from_secs(secs));
        self.update(
            ChangeSource::Snapshot,
            Scope::All,
            move |_, policy| {
                let records = saved.devices.into_iter().map(Arc::new).collect();
                let view = View::from_shared_records(records, saved.overrides, Some(policy));
                match synced_at {
                    Some(at) => view.synced(at),
                    None => view,
                }
            },
            |_| None,
        )
    }

    /// Registers a long-lived response of `device_id` / `user`, cut at once if that device or
    /// user becomes blocked. Register before deciding, so that no block falls between the two.
    pub fn register_stream(&self, device_id: Option<&str>, user: Option<&str>) -> StreamGuard {
        self.shared.streams.register(
            device_id.map(DeviceId::new),
            user.map(str::to_ascii_lowercase),
        )
    }

    /// Number of long-lived responses registered now.
    pub fn open_streams(&self) -> usize {
        self.shared.streams.len()
    }

    /// Replaces every device (a full sync or a loaded snapshot); overrides are kept.
    ///
    /// A periodic full sync mostly repeats what the view holds: where a record equals the
    /// view's, the view's own is kept, so that the old view's drop frees only what changed.
    pub fn replace_all(&self, records: Vec<DeviceRecord>, source: ChangeSource) -> Vec<Transition> {
        let held = self.shared.view.load_full();
        let records = records
            .into_iter()
            .map(|record| held.share(record))
            .collect();
        drop(held);
        self.replace_all_shared(records, source)
    }

    /// [`Compliance::replace_all`] with records in their `Arc`s already (as
    /// [`crate::sync::DeviceSource::full`] gives them: a million records are not copied again).
    /// Unchanged devices should come as the view's own `Arc`s (as
    /// [`crate::sync::DeviceSource::full_reusing`] gives them): their decisions are then not
    /// worked out again, and the old view's drop frees only what changed.
    pub fn replace_all_shared(
        &self,
        records: Vec<Arc<DeviceRecord>>,
        source: ChangeSource,
    ) -> Vec<Transition> {
        self.update(
            source,
            Scope::All,
            |old, policy| {
                View::from_shared_records(records, old.overrides().clone(), Some(policy))
                    .synced(SystemTime::now())
            },
            |new| Some(Update::Full(new.clone())),
        )
    }

    /// [`Compliance::replace_all_shared`] with what a full sync fetched from the console, the
    /// fetch having started at `fetch_started`: a device that a change event changed since
    /// then keeps what the event made of it (its record, or its absence). The console's answer
    /// may have been read before the event's change, and a wipe undone by a stale page would
    /// open the gate until the next sync; the next delta sync reads the device again anyway.
    pub fn replace_all_fetched(
        &self,
        records: Vec<Arc<DeviceRecord>>,
        source: ChangeSource,
        fetch_started: Instant,
    ) -> Vec<Transition> {
        self.update(
            source,
            Scope::All,
            |old, policy| {
                let newer = self.events_since(fetch_started);
                let records = if newer.is_empty() {
                    records
                } else {
                    let mut kept: Vec<Arc<DeviceRecord>> = records
                        .into_iter()
                        .filter(|record| !newer.contains(&record.device_id))
                        .collect();
                    kept.extend(
                        newer
                            .iter()
                            .filter_map(|id| old.device(id.as_str()).cloned()),
                    );
                    kept
                };
                View::from_shared_records(records, old.overrides().clone(), Some(policy))
                    .synced(SystemTime::now())
            },
            |new| Some(Update::Full(new.clone())),
        )
    }

    /// [`Compliance::apply`] for changes a delta sync fetched, the fetch having started at
    /// `fetch_started`: the changes of devices that a change event changed since then are left
    /// out (see [`Compliance::replace_all_fetched`]).
    pub fn apply_fetched(
        &self,
        changes: Vec<Change>,
        source: ChangeSource,
        fetch_started: Instant,
    ) -> Vec<Transition> {
        self.apply_changes(changes, source, true, Some(fetch_started))
    }

    /// The devices a change event changed at or after `since`, forgetting older events (a
    /// sync's fetch that started before them is over).
    fn events_since(&self, since: Instant) -> Vec<DeviceId> {
        let mut times = self
            .shared
            .event_times
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        times.retain(|_, at| *at >= since);
        times.keys().cloned().collect()
    }

    /// Applies changes to some devices (a delta sync or a change event).
    pub fn apply(&self, changes: Vec<Change>, source: ChangeSource) -> Vec<Transition> {
        self.apply_changes(changes, source, true, None)
    }

    /// Applies `changes` made by `source`, handing them to the replicator when `publish`.
    /// With `fetched` (when a sync's fetch started), the changes of devices a change event
    /// changed since then are left out. Looked at and recorded under the writer lock (in
    /// `update`), so that no event slips in between; the replicator gets what was kept.
    fn apply_changes(
        &self,
        changes: Vec<Change>,
        source: ChangeSource,
        publish: bool,
        fetched: Option<Instant>,
    ) -> Vec<Transition> {
        if changes.is_empty() {
            return Vec::new();
        }
        let touched = changes
            .iter()
            .map(|change| change_device(change).clone())
            .collect();
        let publish = publish && self.shared.replicator.get().is_some();
        let event = source == ChangeSource::ChangeEvent;
        let kept = std::cell::RefCell::new(changes);
        self.update(
            source,
            Scope::Devices(touched),
            |old, _| {
                let mut kept = kept.borrow_mut();
                if let Some(fetch_started) = fetched {
                    let newer = self.events_since(fetch_started);
                    kept.retain(|change| !newer.contains(change_device(change)));
                }
                if event {
                    let now = Instant::now();
                    let mut times = self
                        .shared
                        .event_times
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    for change in kept.iter() {
                        times.insert(change_device(change).clone(), now);
                    }
                }
                old.with_changes(&kept)
            },
            |_| {
                let kept = kept.take();
                (publish && !kept.is_empty()).then_some(Update::Changes(kept))
            },
        )
    }

    /// Sets (`Some`) or clears (`None`) the override of a device.
    pub fn set_device_override(
        &self,
        device_id: &str,
        action: Option<Override>,
    ) -> Vec<Transition> {
        self.device_override(DeviceId::new(device_id), action, true)
    }

    fn device_override(
        &self,
        id: DeviceId,
        action: Option<Override>,
        publish: bool,
    ) -> Vec<Transition> {
        self.update(
            ChangeSource::Override,
            Scope::Devices(vec![id.clone()]),
            |old, _| {
                let mut overrides = old.overrides().clone();
                match action {
                    Some(action) => overrides.devices.insert(id.clone(), action),
                    None => overrides.devices.remove(&id),
                };
                old.with_overrides(overrides)
            },
            |_| {
                publish.then(|| Update::DeviceOverride {
                    device_id: id.clone(),
                    action,
                })
            },
        )
    }

    /// Sets (`Some`) or clears (`None`) the override of a user (UPN, any case).
    pub fn set_user_override(&self, user: &str, action: Option<Override>) -> Vec<Transition> {
        self.user_override(user.to_ascii_lowercase(), action, true)
    }

    fn user_override(
        &self,
        user: String,
        action: Option<Override>,
        publish: bool,
    ) -> Vec<Transition> {
        let user = user.to_ascii_lowercase();
        self.update(
            ChangeSource::Override,
            Scope::User(user.clone()),
            |old, _| {
                let mut overrides = old.overrides().clone();
                match action {
                    Some(action) => overrides.users.insert(user.clone(), action),
                    None => overrides.users.remove(&user),
                };
                old.with_overrides(overrides)
            },
            |_| {
                publish.then(|| Update::UserOverride {
                    user: user.clone(),
                    action,
                })
            },
        )
    }

    /// Replaces all overrides (loading a snapshot).
    pub fn replace_overrides(&self, overrides: Overrides) -> Vec<Transition> {
        self.update(
            ChangeSource::Snapshot,
            Scope::All,
            |old, _| old.with_overrides(overrides),
            |_| None,
        )
    }

    /// Swaps in the view `change` makes of the current one, hands what `replicate` makes of
    /// the new view to the replicator (if any, still under the writer lock so that the
    /// replicator sees changes in the order they were made), then announces what changed.
    fn update(
        &self,
        source: ChangeSource,
        scope: Scope,
        change: impl FnOnce(&View, &Arc<PolicySettings>) -> View,
        replicate: impl FnOnce(&Arc<View>) -> Option<Update>,
    ) -> Vec<Transition> {
        let _writer = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.shared.view.load_full();
        let policy = self.shared.policy.clone();
        // Every view served is prepared for the policy (a no-op for views built with it).
        let new = Arc::new(change(&old, &policy).prepared(&policy));
        // The first view is not a change of any device: before it, every device was unknown
        // only because nothing was loaded yet. Announcing it would tell ENS about every device.
        let transitions = if old.is_loaded() {
            transitions(&old, &new, &policy, source, &scope)
        } else {
            Vec::new()
        };
        if let Some(replicator) = self.shared.replicator.get()
            && let Some(update) = replicate(&new)
        {
            replicator.publish(update, source);
        }
        self.shared.view.store(new);
        self.shared.version.send_modify(|version| *version += 1);
        drop(_writer);
        for transition in &transitions {
            if !transition.after.is_allowed() {
                let cut = self.shared.streams.cut(
                    &transition.device_id,
                    transition.user.as_deref(),
                    |device, user| self.decide(device, user),
                );
                if cut > 0 {
                    tracing::info!(device = %transition.device_id, streams = cut, reason = transition.after.reason(), "cut the streams of a device that became blocked");
                }
            }
            tracing::info!(
                device = %transition.device_id,
                user = transition.user.as_deref().unwrap_or(""),
                from = transition.before.state(),
                to = transition.after.state(),
                reason = transition.after.reason(),
                source = ?transition.source,
                "device decision changed"
            );
            // Counted here rather than by a subscriber, which could lag and miss some.
            if let Some(metrics) = &self.shared.metrics {
                metrics.transition(&transition.after, transition.source);
            }
            // No subscriber is not an error: nothing listens for transitions in a bare gateway.
            let _ = self.shared.transitions.send(transition.clone());
        }
        transitions
    }
}

/// The device a change is about.
fn change_device(change: &Change) -> &DeviceId {
    match change {
        Change::Upsert(record) => &record.device_id,
        Change::Remove(id) => id,
    }
}

/// A [`Compliance`] that does not keep its state alive.
#[derive(Clone, Debug)]
pub(crate) struct WeakCompliance(Weak<Shared>);

impl WeakCompliance {
    /// The state, unless every [`Compliance`] handle on it is gone.
    pub(crate) fn upgrade(&self) -> Option<Compliance> {
        self.0.upgrade().map(|shared| Compliance { shared })
    }
}

/// Which devices a change can affect.
enum Scope {
    /// Any device (a full sync, new overrides wholesale).
    All,
    /// These devices only.
    Devices(Vec<DeviceId>),
    /// The devices of this user (lower-case).
    User(String),
}

/// Devices whose decision differs between two views, within `scope`: every device of either view, and every
/// device named by an override of either (an override may name a device the console does not
/// list).
fn transitions(
    old: &View,
    new: &View,
    policy: &Arc<PolicySettings>,
    source: ChangeSource,
    scope: &Scope,
) -> Vec<Transition> {
    let now = if policy.inactivity_days > 0 {
        now_secs()
    } else {
        0
    };
    let mut out = Vec::new();
    let mut check = |id: &DeviceId| {
        let before = old.decide(policy, Some(id.as_str()), None, now);
        let after = new.decide(policy, Some(id.as_str()), None, now);
        if before != after {
            let user = new
                .device(id.as_str())
                .or_else(|| old.device(id.as_str()))
                .and_then(|r| r.user.as_deref().map(str::to_owned));
            out.push(Transition {
                device_id: id.clone(),
                user,
                before,
                after,
                source,
            });
        }
    };
    match scope {
        // Each id is visited once by construction: no set of a million ids to dedup them.
        Scope::All => {
            // A record the new view shares with the old (the same `Arc`), under the same
            // overrides, has the same decision: skip working it out twice.
            let same_overrides = old.overrides() == new.overrides();
            for record in new.devices() {
                let id = record.device_id.as_str();
                if same_overrides && old.device(id).is_some_and(|held| Arc::ptr_eq(held, record)) {
                    continue;
                }
                check(&record.device_id);
            }
            for record in old.devices() {
                if new.device(record.device_id.as_str()).is_none() {
                    check(&record.device_id);
                }
            }
            let listed = |id: &DeviceId| {
                new.device(id.as_str()).is_some() || old.device(id.as_str()).is_some()
            };
            let (new_overrides, old_overrides) =
                (&new.overrides().devices, &old.overrides().devices);
            for id in new_overrides.keys() {
                if !listed(id) {
                    check(id);
                }
            }
            for id in old_overrides.keys() {
                if !listed(id) && !new_overrides.contains_key(id) {
                    check(id);
                }
            }
        }
        Scope::Devices(ids) => {
            let mut seen = std::collections::HashSet::with_capacity(ids.len());
            for id in ids.iter().filter(|id| seen.insert(*id)) {
                check(id);
            }
        }
        Scope::User(user) => {
            let mut seen = std::collections::HashSet::new();
            let records = new
                .devices_of_user(user)
                .into_iter()
                .chain(old.devices_of_user(user));
            for record in records.filter(|r| seen.insert(r.device_id.clone())) {
                check(&record.device_id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{ComplianceStatus, Enrollment};
    use crate::policy::{AllowReason, BlockReason};

    fn phone(id: &str, user: &str) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::new(id),
            user: Some(user.into()),
            enrollment: Enrollment::Enrolled,
            compliance: ComplianceStatus::Compliant,
            managed: true,
            ..Default::default()
        }
    }

    /// The race the soak run found: a sync reads the console, a wipe's change event arrives
    /// and is applied, then the sync's answer, read before the wipe, is applied.
    #[test]
    fn a_sync_fetched_before_a_change_event_does_not_undo_it() {
        let compliance = Compliance::new(PolicySettings::default());
        compliance.replace_all(
            vec![
                phone("A1", "alice@test.local"),
                phone("A2", "alice@test.local"),
            ],
            ChangeSource::FullSync,
        );
        let allowed = |id| compliance.decide(Some(id), None).is_allowed();
        let wiped = |id| DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..phone(id, "alice@test.local")
        };

        let fetch_started = Instant::now();
        compliance.apply(vec![Change::Upsert(wiped("A1"))], ChangeSource::ChangeEvent);
        // An event that adds a device, and one that removes one, while the pages are read.
        compliance.apply(
            vec![Change::Upsert(phone("N1", "bob@test.local"))],
            ChangeSource::ChangeEvent,
        );
        compliance.apply(
            vec![Change::Remove(DeviceId::new("A2"))],
            ChangeSource::ChangeEvent,
        );
        assert!(!allowed("A1"));

        // The delta's answer, read before the wipe, says A1 is compliant: left out.
        let transitions = compliance.apply_fetched(
            vec![Change::Upsert(phone("A1", "alice@test.local"))],
            ChangeSource::DeltaSync,
            fetch_started,
        );
        assert!(transitions.is_empty(), "{transitions:?}");
        assert!(!allowed("A1"), "a stale delta reopened the gate");

        // A full sync read before the events: each device keeps what its event made of it.
        compliance.replace_all_fetched(
            vec![
                Arc::new(phone("A1", "alice@test.local")),
                Arc::new(phone("A2", "alice@test.local")),
                Arc::new(phone("B1", "bob@test.local")),
            ],
            ChangeSource::FullSync,
            fetch_started,
        );
        let view = compliance.view();
        assert!(!allowed("A1"), "a stale full sync reopened the gate");
        assert!(view.device("A2").is_none(), "the removal holds");
        assert!(view.device("N1").is_some(), "the event's new device holds");
        assert!(view.device("B1").is_some(), "the rest is the sync's");
        assert_eq!(view.len(), 3);

        // What a sync reads after the event is newer than it, and applies.
        let later = Instant::now();
        compliance.apply_fetched(
            vec![Change::Upsert(phone("A1", "alice@test.local"))],
            ChangeSource::DeltaSync,
            later,
        );
        assert!(allowed("A1"), "a newer read applies");
        assert!(
            compliance.shared.event_times.lock().unwrap().is_empty(),
            "events older than the last fetch are forgotten"
        );
    }

    #[test]
    fn a_full_sync_keeps_the_views_own_record_where_nothing_changed() {
        let compliance = loaded();
        let before = compliance.view();
        let mut changed = phone("A2", "alice@test.local");
        changed.enrollment = Enrollment::EnterpriseWiped;
        compliance.replace_all(
            vec![
                phone("A1", "alice@test.local"),
                changed,
                phone("B1", "bob@test.local"),
            ],
            ChangeSource::FullSync,
        );
        let after = compliance.view();
        assert!(Arc::ptr_eq(
            before.device("A1").unwrap(),
            after.device("A1").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            before.device("A2").unwrap(),
            after.device("A2").unwrap()
        ));
        assert_eq!(
            after.device("A2").unwrap().enrollment,
            Enrollment::EnterpriseWiped
        );
    }

    fn loaded() -> Compliance {
        let compliance = Compliance::new(PolicySettings::default());
        compliance.replace_all(
            vec![
                phone("A1", "alice@test.local"),
                phone("A2", "alice@test.local"),
                phone("B1", "bob@test.local"),
            ],
            ChangeSource::FullSync,
        );
        compliance
    }

    #[test]
    fn the_first_view_is_not_a_transition() {
        let compliance = Compliance::new(PolicySettings::default());
        let mut events = compliance.subscribe();
        assert!(!compliance.view().is_loaded());
        let transitions = compliance.replace_all(
            vec![phone("A1", "alice@test.local")],
            ChangeSource::FullSync,
        );
        assert!(transitions.is_empty());
        assert!(events.try_recv().is_err(), "nothing announced");
        assert!(compliance.view().is_loaded());
        assert!(compliance.decide(Some("A1"), None).is_allowed());
    }

    #[test]
    fn a_wipe_event_is_one_transition_and_is_published() {
        let compliance = loaded();
        let mut events = compliance.subscribe();
        let wiped = DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..phone("A1", "alice@test.local")
        };
        let transitions = compliance.apply(vec![Change::Upsert(wiped)], ChangeSource::ChangeEvent);
        assert_eq!(transitions.len(), 1);
        let published = events.try_recv().unwrap();
        assert_eq!(published, transitions[0]);
        assert_eq!(
            published.after,
            Decision::Block(BlockReason::EnterpriseWiped)
        );
        assert_eq!(published.user.as_deref(), Some("alice@test.local"));
        assert!(
            compliance.decide(Some("A2"), None).is_allowed(),
            "other devices are untouched"
        );
    }

    #[test]
    fn full_sync_reports_devices_that_changed_or_disappeared_once_each() {
        let compliance = loaded();
        compliance.set_device_override("LAB1", Some(Override::Allow));
        let wiped = DeviceRecord {
            enrollment: Enrollment::EnterpriseWiped,
            ..phone("A1", "alice@test.local")
        };
        // A1 wiped, A2 gone from UEM, B1 unchanged, LAB1 known only by its override.
        let transitions = compliance.replace_all(
            vec![wiped, phone("B1", "bob@test.local")],
            ChangeSource::FullSync,
        );
        let mut moved: Vec<(&str, &str)> = transitions
            .iter()
            .map(|t| (t.device_id.as_str(), t.after.reason()))
            .collect();
        moved.sort_unstable();
        assert_eq!(
            moved,
            [("A1", "enterprise-wiped"), ("A2", "unknown-device")]
        );
    }

    #[test]
    fn unchanged_records_make_no_transition() {
        let compliance = loaded();
        let again = compliance.apply(
            vec![Change::Upsert(phone("A1", "alice@test.local"))],
            ChangeSource::DeltaSync,
        );
        assert!(again.is_empty());
        let full = compliance.replace_all(
            vec![
                phone("A1", "alice@test.local"),
                phone("A2", "alice@test.local"),
                phone("B1", "bob@test.local"),
            ],
            ChangeSource::FullSync,
        );
        assert!(full.is_empty());
    }

    #[test]
    fn a_user_override_moves_every_device_of_that_user() {
        let compliance = loaded();
        let transitions = compliance.set_user_override("Alice@Test.Local", Some(Override::Block));
        let mut ids: Vec<&str> = transitions.iter().map(|t| t.device_id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["A1", "A2"]);
        assert_eq!(
            compliance.decide(Some("A1"), None),
            Decision::Block(BlockReason::UserOverride)
        );
        let cleared = compliance.set_user_override("alice@test.local", None);
        assert_eq!(cleared.len(), 2);
        assert!(compliance.decide(Some("A1"), None).is_allowed());
    }

    #[test]
    fn device_override_on_an_unknown_device_is_a_transition() {
        let compliance = loaded();
        let transitions = compliance.set_device_override("lab-phone", Some(Override::Allow));
        assert_eq!(transitions.len(), 1);
        assert_eq!(
            transitions[0].after,
            Decision::Allow(AllowReason::DeviceOverride)
        );
        assert!(compliance.decide(Some("LAB-PHONE"), None).is_allowed());
    }

    #[test]
    fn blocking_cuts_the_registered_streams_of_that_device_only() {
        let compliance = loaded();
        let a1 = compliance.register_stream(Some("a1"), None);
        let b1 = compliance.register_stream(Some("B1"), None);
        assert_eq!(compliance.open_streams(), 2);
        compliance.set_device_override("A1", Some(Override::Block));
        assert!(a1.is_cut());
        assert!(!b1.is_cut());
        drop(a1);
        assert_eq!(compliance.open_streams(), 1);
    }

    #[test]
    fn blocking_one_device_leaves_the_streams_of_the_users_other_devices() {
        // Requests without a device id let through: alice's own decision is then allowed.
        let compliance = Compliance::new(PolicySettings {
            unknown_device: crate::policy::UnknownDevice::Allow,
            ..PolicySettings::default()
        });
        compliance.replace_all(
            vec![
                phone("A1", "alice@test.local"),
                phone("A2", "alice@test.local"),
            ],
            ChangeSource::FullSync,
        );
        let p1 = compliance.register_stream(Some("A1"), Some("alice@test.local"));
        let p2 = compliance.register_stream(Some("A2"), Some("alice@test.local"));
        let no_device = compliance.register_stream(None, Some("alice@test.local"));
        compliance.set_device_override("A1", Some(Override::Block));
        assert!(p1.is_cut());
        assert!(!p2.is_cut(), "alice's other device streams on");
        assert!(!no_device.is_cut(), "alice herself is not blocked");
        compliance.set_user_override("alice@test.local", Some(Override::Block));
        assert!(p2.is_cut() && no_device.is_cut());
    }

    #[test]
    fn blocking_a_user_cuts_streams_registered_under_that_user() {
        let compliance = loaded();
        let by_user = compliance.register_stream(None, Some("ALICE@test.local"));
        compliance.set_user_override("alice@test.local", Some(Override::Block));
        assert!(by_user.is_cut());
    }

    #[derive(Debug, Default)]
    struct Recorded(Mutex<Vec<(String, ChangeSource)>>);

    impl Replicator for Recorded {
        fn publish(&self, update: Update, source: ChangeSource) {
            let kind = match update {
                Update::Changes(changes) => format!("changes:{}", changes.len()),
                Update::Full(view) => format!("full:{}", view.len()),
                Update::DeviceOverride { device_id, .. } => format!("device:{device_id}"),
                Update::UserOverride { user, .. } => format!("user:{user}"),
            };
            self.0.lock().unwrap().push((kind, source));
        }
    }

    #[test]
    fn local_changes_are_published_in_order_and_replicated_ones_are_not() {
        let compliance = Compliance::new(PolicySettings::default());
        let recorded = Arc::new(Recorded::default());
        compliance.replicate_to(recorded.clone()).unwrap();
        assert!(
            compliance.replicate_to(recorded.clone()).is_err(),
            "one replicator"
        );

        compliance.load_saved(crate::snapshot::Saved::default());
        compliance.replace_all(
            vec![phone("A1", "alice@test.local")],
            ChangeSource::FullSync,
        );
        compliance.apply(
            vec![Change::Remove(DeviceId::new("A1"))],
            ChangeSource::ChangeEvent,
        );
        compliance.set_device_override("lab1", Some(Override::Allow));
        compliance.set_user_override("Bob@Test.Local", Some(Override::Block));
        // From another node: applied, not published again.
        let transitions = compliance.apply_replicated(
            Update::Changes(vec![Change::Upsert(phone("B1", "bob@test.local"))]),
            ChangeSource::DeltaSync,
        );
        compliance.apply_replicated(
            Update::DeviceOverride {
                device_id: DeviceId::new("B2"),
                action: Some(Override::Block),
            },
            ChangeSource::Override,
        );

        assert_eq!(
            *recorded.0.lock().unwrap(),
            [
                ("full:1".to_string(), ChangeSource::FullSync),
                ("changes:1".to_string(), ChangeSource::ChangeEvent),
                ("device:LAB1".to_string(), ChangeSource::Override),
                ("user:bob@test.local".to_string(), ChangeSource::Override),
            ]
        );
        assert_eq!(
            transitions.len(),
            1,
            "a replicated change is a transition here too"
        );
        assert_eq!(transitions[0].source, ChangeSource::DeltaSync);
        assert_eq!(
            compliance.decide(Some("B1"), None),
            Decision::Block(BlockReason::UserOverride)
        );
        assert!(!compliance.decide(Some("B2"), None).is_allowed());
    }

    #[test]
    fn a_replicated_full_view_replaces_devices_and_overrides() {
        let compliance = loaded();
        compliance.set_device_override("A1", Some(Override::Block));
        let view = View::from_records(vec![phone("C1", "carol@test.local")], Overrides::default());
        let transitions =
            compliance.apply_replicated(Update::Full(Arc::new(view)), ChangeSource::Snapshot);
        assert!(compliance.decide(Some("C1"), None).is_allowed());
        assert!(
            !compliance.decide(Some("A2"), None).is_allowed(),
            "gone from the view"
        );
        assert!(compliance.view().overrides().devices.is_empty());
        assert!(transitions.iter().any(|t| t.device_id.as_str() == "C1"));
    }
}
